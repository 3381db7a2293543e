"""Pull scheduling: who does which sample, exactly once.

``work`` (the shared wire types: SampleRequest, Snapshot, Lease, GroupResult, DrainReport,
the SamplerConfig wire form), ``leases`` (the pure lease table), ``journal`` (its write-ahead
log), ``scheduler`` (the SchedulerActor around both), ``preemption`` (a node's notice ->
drain -> leave). Imports only ``spotlight.runtime`` and ``spotlight.models``.
"""
