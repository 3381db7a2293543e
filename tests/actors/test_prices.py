"""Prices and cost accounting, checked against hand computation."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from spotlight.actors.spot.prices import PRICE_PRESETS, CostMeter, Prices, cost_table
from spotlight.actors.spot.trace import parse_trace


def test_default_prices_and_discount() -> None:
    p = Prices()
    assert p.ondemand_usd_per_gpu_hour == pytest.approx(98.32 / 8, abs=0.005)
    assert 0.69 <= p.spot_discount <= 0.77  # DESIGN.md: spot H100 is 69-77% cheaper
    assert p.per_gpu_hour("spot") == p.spot_usd_per_gpu_hour
    assert Prices.preset("gcp-a3-high-2026").spot_discount == pytest.approx(0.25)
    assert set(PRICE_PRESETS) >= {"aws-p5", "gcp-a3-high-2026"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"spot_usd_per_gpu_hour": -1.0}, "spot_usd_per_gpu_hour"),
        ({"ondemand_usd_per_gpu_hour": float("nan")}, "ondemand_usd_per_gpu_hour"),
    ],
)
def test_prices_validate(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Prices(**kwargs)  # type: ignore[arg-type]


def test_bad_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="valid presets"):
        Prices.preset("azure")
    with pytest.raises(ValueError, match="valid"):
        Prices().per_gpu_hour("reserved")
    with pytest.raises(ValueError, match="valid"):
        CostMeter().add_interval("reserved", 0, 1)
    with pytest.raises(ValueError, match="start <= stop"):
        CostMeter().add_interval("spot", 5, 1)


def test_cost_meter_matches_hand_computation() -> None:
    prices = Prices(ondemand_usd_per_gpu_hour=10.0, spot_usd_per_gpu_hour=3.0)
    m = CostMeter(prices)
    m.add_interval("ondemand", 0, 3600, gpus=2)  # 2 GPU-h
    m.add_intervals("spot", [(0, 1800), (100, 1900)], gpus=4)  # 2 x 0.5 h x 4 = 4 GPU-h
    s = m.summary()
    assert s.gpu_hours == {"ondemand": pytest.approx(2.0), "spot": pytest.approx(4.0)}
    assert s.dollars == {"ondemand": pytest.approx(20.0), "spot": pytest.approx(12.0)}
    assert s.total_dollars == pytest.approx(32.0)
    assert s.to_dict()["total_usd"] == pytest.approx(32.0)


def test_cost_meter_from_trace() -> None:
    tr = parse_trace("t_s,event,node\n0,add,a\n900,add,b\n1800,remove,a\n3600,add,c\n")
    m = CostMeter(Prices(ondemand_usd_per_gpu_hour=1.0, spot_usd_per_gpu_hour=2.0))
    # a: 0-1800, b: 900-3600 (alive at the end), c starts at the end: not billed
    m.add_trace(tr, gpus_per_node=8)
    assert m.gpu_hours("spot") == pytest.approx(8 * (0.5 + 0.75))
    m2 = CostMeter()
    m2.add_trace(tr, gpus_per_node=1, until_s=1200)  # a 1200 s, b 300 s
    assert m2.gpu_hours("spot") == pytest.approx(1500 / 3600)


def test_cost_table_renders() -> None:
    m = CostMeter()
    m.add_interval("spot", 0, 3600, gpus=1)
    buf = io.StringIO()
    Console(file=buf, width=150).print(cost_table({"spotlight": m.summary()}, title="Cost"))
    text = buf.getvalue()
    assert "spotlight" in text and "3.32" in text and "aws-p5" in text
