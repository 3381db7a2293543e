"""Weight versions: from the trainer to every sampler.

``share`` (shared-memory copies on a node), ``publish`` (WeightPublisher: chunked streams),
``slot`` (a sampler's current/previous weights), ``policy_spec`` (what a node builds). Imports
only ``spotlight.runtime`` and ``spotlight.models``.
"""
