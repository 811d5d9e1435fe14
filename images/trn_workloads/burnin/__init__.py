"""Burn-in of a new accelerator node before it takes its first pod.

Karpenter launches every node of a burn-in pool with the startup taint
`trn-platform/burn-in` (infra/nodepools.py); the burn-in DaemonSet (infra/burnin.py), the
only pod that tolerates it, runs here on the node: `neuron-ls --json-output`, `fi_info -p
efa` and a single-node `nccom-test` all-reduce, checked against the catalog facts of the
node's instance type (`checks`). On a pass it removes the taint; on a failure it keeps the
taint, records why (a node Event and the `BurnInPassed=False` condition) and deletes the
node's NodeClaim so Karpenter replaces it, at most `maxReplacementsPerHour` per pool
(`decisions`). Parsers (`parsers`) and decisions are pure; `kube` is the API client and
`__main__` runs the commands. Standard library only: it runs inside the Neuron DLC of
the pool's track, which has the Neuron tools and libfabric but no Kubernetes client.
"""
