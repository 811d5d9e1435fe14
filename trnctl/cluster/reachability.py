"""Reachability: NetworkPolicy semantics applied to every flow the platform's own components need.

Semantics (Kubernetes NetworkPolicy, networking.k8s.io/v1; kubernetes/kubernetes@v1.34.0
pkg/apis/networking/types.go and https://kubernetes.io/docs/concepts/services-networking/network-policies/),
as the VPC CNI's network policy agent enforces them (aws/aws-network-policy-agent, upstream semantics):
- a pod is isolated for ingress (egress) when any policy in its namespace selects it and lists
  Ingress (Egress) in policyTypes (policyTypes defaults to Ingress, plus Egress when egress rules exist);
- a flow is allowed when the destination admits it (no isolating policy, or some ingress rule of
  a selecting policy matches) AND the source lets it out (the same for egress);
- a peer with only podSelector means pods of the policy's own namespace; only namespaceSelector,
  every pod of the selected namespaces; both, pods matching both; namespaces always carry
  `kubernetes.io/metadata.name` (trnctl.cluster.Model.namespaces);
- ports: none listed = every port; a named port matches the destination pod's container port of
  that name (resolved per pod) among its containers only: the EKS network policy controller looks a named
  port up in `pod.Spec.Containers`, not in init containers, so a native sidecar's named port is never
  admitted, only its number (aws/amazon-network-policy-controller-k8s@13358c75 pkg/k8s/pod_utils.go
  LookupContainerPortAndName; pkg/resolvers/endpoints.go getPortList: "Isolate the pod for the port if we
  are unable to resolve the named port"); protocol defaults to TCP; endPort makes a range.
- Prometheus' pod discovery does list init containers' ports (trnctl.operators.prometheus_operator
  pod_targets), so a sidecar's scrape port is a flow to check.
`kubectl port-forward` enters the pod's network namespace through the kubelet and the container
runtime (CRI streaming), so NetworkPolicies do not apply to it: client port-forward paths only need
the Service and port to exist, which the render's schema validation already covers.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from itertools import permutations

from trnctl.cluster import MANDATORY, Finding, Model, labels_of, match_selector, obj_id
from trnctl.operators import OWNER_ANNOTATION

RULE = "reachability"
ANY_PORT = None  # "every port": only a rule with no ports list admits it
UNRESOLVED = -1  # a flow whose destination no pod answers


@dataclass(frozen=True)
class Endpoint:
    """A pod as a NetworkPolicy sees it: namespace, labels, named container ports (containers only, as the
    policy controller resolves them) and every declared port (init containers too: what listens)."""
    name: str
    namespace: str
    labels: dict
    ports: dict  # port name -> (number, protocol), of the containers
    sidecar_ports: dict = field(default_factory=dict)  # the same, of the init containers (native sidecars)

    @classmethod
    def of_pod(cls, pod: dict) -> "Endpoint":
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}

        def named(containers: list[dict]) -> dict:
            return {p["name"]: (int(p["containerPort"]), p.get("protocol", "TCP"))
                    for c in containers for p in c.get("ports") or [] if p.get("name")}
        return cls(f"Pod {meta.get('namespace')}/{meta.get('name')}", meta.get("namespace") or "default",
                   dict(meta.get("labels") or {}), named(spec.get("containers") or []),
                   named(spec.get("initContainers") or []))

    def declared_ports(self) -> set[int]:
        return {n for n, _ in [*self.ports.values(), *self.sidecar_ports.values()]}


def platform_clients(model: Model) -> dict[str, Endpoint]:
    """The platform components that open connections into workload pods, in the namespaces their
    releases install them to, with the pod labels their charts/operators set (the same constants
    the `ml-shared` policy selects: infra/monitoring/values.py, infra/addons.py)."""
    from infra import addons, versions
    from infra.monitoring import values as mon
    out: dict[str, Endpoint] = {}
    kps = model.release(versions.KUBE_PROMETHEUS_STACK_CHART)
    if kps:
        out["prometheus"] = Endpoint(f"Prometheus ({kps['namespace']})", kps["namespace"], dict(mon.PROMETHEUS_POD_LABELS), {
            "http-web": (mon_port(), "TCP")})
        out["grafana"] = Endpoint(f"Grafana ({kps['namespace']})", kps["namespace"], dict(mon.GRAFANA_POD_LABELS), {})
    kuberay = model.release(versions.KUBERAY_CHART)
    if kuberay:
        out["kuberay-operator"] = Endpoint(f"KubeRay operator ({kuberay['namespace']})", kuberay["namespace"],
                                           dict(addons.KUBERAY_OPERATOR_POD_LABELS), {})
    keda = model.release(versions.KEDA_CHART)
    if keda:
        out["keda-operator"] = Endpoint(f"KEDA operator ({keda['namespace']})", keda["namespace"],
                                        dict(addons.KEDA_OPERATOR_POD_LABELS), {})
    return out


def prometheus_addresses(namespace: str) -> list[str]:
    """The URLs that reach the platform's Prometheus Service (kube-prometheus-stack with our
    fullnameOverride: infra/monitoring/values.py PROMETHEUS_SERVICE) from another namespace."""
    from infra.monitoring.values import PROMETHEUS_SERVICE
    return [f"http://{PROMETHEUS_SERVICE}.{namespace}.svc{suffix}:{mon_port()}" for suffix in ("", ".cluster.local")]


def mon_port() -> int:
    from infra.monitoring import PROMETHEUS_PORT
    return PROMETHEUS_PORT


# --------------------------------------------------------------------------- policy semantics


def policy_types(policy: dict) -> set[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress", *(["Egress"] if spec.get("egress") else [])}


def selecting(policies: list[dict], pod: Endpoint, direction: str) -> list[dict]:
    return [p for p in policies if p["metadata"].get("namespace", "default") == pod.namespace
            and direction in policy_types(p) and match_selector((p.get("spec") or {}).get("podSelector") or {}, pod.labels)]


def peer_matches(peer: dict, policy_ns: str, other: Endpoint, namespaces: dict[str, dict]) -> bool:
    if "ipBlock" in peer:
        # Pod IPs come from the VPC: only a block covering every address admits an arbitrary pod.
        block = peer["ipBlock"]
        return ipaddress.ip_network(block["cidr"]).prefixlen == 0 and not block.get("except")
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if ns_sel is None and pod_sel is None:
        return False
    if ns_sel is None:
        ns_ok = other.namespace == policy_ns
    else:
        ns_ok = match_selector(ns_sel, namespaces.get(other.namespace, {"kubernetes.io/metadata.name": other.namespace}))
    return ns_ok and (pod_sel is None or match_selector(pod_sel, other.labels))


def port_matches(rule_ports: list[dict] | None, dst: Endpoint, port: int | None, protocol: str) -> bool:
    if not rule_ports:
        return True
    if port is ANY_PORT:
        return False
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != protocol:
            continue
        want = rp.get("port")
        if want is None:
            return True
        if isinstance(want, str) and not want.isdigit():
            named = dst.ports.get(want)
            if named and named[0] == port and named[1] == protocol:
                return True
            continue
        lo = int(want)
        if lo <= port <= int(rp.get("endPort", lo)):
            return True
    return False


def _admits(policies: list[dict], direction: str, local: Endpoint, remote: Endpoint, dst: Endpoint,
            port: int | None, protocol: str, namespaces: dict) -> bool:
    chosen = selecting(policies, local, direction)
    if not chosen:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in chosen:
        for rule in (policy.get("spec") or {}).get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(peer_matches(p, policy["metadata"].get("namespace", "default"), remote, namespaces)
                                       for p in peers)
            if peer_ok and port_matches(rule.get("ports"), dst, port, protocol):
                return True
    return False


def allowed(model: Model, src: Endpoint, dst: Endpoint, port: int | None, protocol: str = "TCP") -> bool:
    """Whether `src` can open a connection to `dst` on `port` (ANY_PORT: on every port)."""
    policies = model.of_kind("NetworkPolicy")
    namespaces = model.namespaces
    return (_admits(policies, "Ingress", dst, src, dst, port, protocol, namespaces)
            and _admits(policies, "Egress", src, dst, dst, port, protocol, namespaces))


# --------------------------------------------------------------------------- the flows


@dataclass(frozen=True)
class Flow:
    why: str
    src: Endpoint
    dst: Endpoint
    port: int | None
    objects: tuple[str, ...]
    fix: str


def _resolve(dst: Endpoint, port, *, sidecars: bool = False) -> int | None:
    """A port number, or a named port of the pod's containers (and of its init containers with `sidecars`:
    Prometheus' pod discovery lists them)."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    return (dst.ports.get(port) or (dst.sidecar_ports.get(port) if sidecars else None) or (None,))[0]


def needed_flows(model: Model) -> list[Flow]:
    clients = platform_clients(model)
    pods = [(p, Endpoint.of_pod(p)) for p in model.pods]
    flows: list[Flow] = []
    policy_fix = "admit it in the namespace's NetworkPolicy (infra/storage.py workload_ingress_policy)"

    # Prometheus to every pod its PodMonitors select, on each endpoint port the pod has
    # (prometheus-operator: a PodMonitor endpoint port names a container port).
    if "prometheus" in clients:
        for mon_obj in model.of_kind("PodMonitor"):
            spec = mon_obj.get("spec") or {}
            ns_sel = spec.get("namespaceSelector") or {}
            for pod, ep in pods:
                in_ns = ns_sel.get("any") or ep.namespace in (ns_sel.get("matchNames") or [mon_obj["metadata"]["namespace"]])
                if not in_ns or not match_selector(spec.get("selector") or {}, ep.labels):
                    continue
                for endpoint in spec.get("podMetricsEndpoints") or []:
                    number = _resolve(ep, endpoint.get("port"), sidecars=True)
                    if number is not None:
                        flows.append(Flow(f"Prometheus scrapes {ep.name} port {endpoint.get('port')} ({number}) "
                                          f"for PodMonitor {mon_obj['metadata']['name']}", clients["prometheus"], ep,
                                          number, (obj_id(mon_obj), obj_id(pod)), policy_fix))
        # ServiceMonitors: the pods behind each selected Service, on the endpoint's target port.
        for mon_obj in model.of_kind("ServiceMonitor"):
            spec = mon_obj.get("spec") or {}
            ns_names = (spec.get("namespaceSelector") or {}).get("matchNames") or [mon_obj["metadata"]["namespace"]]
            for svc in model.services:
                if svc["metadata"].get("namespace") not in ns_names or not match_selector(spec.get("selector") or {}, labels_of(svc)):
                    continue
                for _pod, ep in pods:
                    if ep.namespace != svc["metadata"].get("namespace") or \
                            not match_selector({"matchLabels": (svc.get("spec") or {}).get("selector") or {}}, ep.labels):
                        continue
                    for endpoint in spec.get("endpoints") or []:
                        sp = next((p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("name") == endpoint.get("port")), None)
                        number = _resolve(ep, sp.get("targetPort", sp.get("port"))) if sp else None
                        if number is not None:
                            flows.append(Flow(f"Prometheus scrapes {ep.name} through Service {svc['metadata']['name']}",
                                              clients["prometheus"], ep, number, (obj_id(mon_obj), obj_id(svc)), policy_fix))

    flows += _ray_flows(model, clients, pods, policy_fix)
    # KEDA's Prometheus scaler and Grafana query Prometheus.
    prom_pod = clients.get("prometheus")
    if prom_pod:
        if "keda-operator" in clients:
            for so in model.of_kind("ScaledObject"):
                for trig in (so.get("spec") or {}).get("triggers") or []:
                    if trig.get("type") != "prometheus":
                        continue
                    address = (trig.get("metadata") or {}).get("serverAddress", "")
                    if address not in prometheus_addresses(prom_pod.namespace):
                        flows.append(Flow(f"KEDA queries {address!r} for ScaledObject {so['metadata']['name']}, which is not "
                                          f"the platform's Prometheus ({prometheus_addresses(prom_pod.namespace)[0]})",
                                          clients["keda-operator"], prom_pod, UNRESOLVED, (obj_id(so),),
                                          "point serverAddress at the platform's Prometheus Service"))
                        continue
                    flows.append(Flow(f"KEDA queries Prometheus for ScaledObject {so['metadata']['name']}",
                                      clients["keda-operator"], prom_pod, mon_port(), (obj_id(so),),
                                      "admit KEDA in the monitoring namespace's policies"))
        if "grafana" in clients:
            flows.append(Flow("Grafana queries its Prometheus data source", clients["grafana"], prom_pod, mon_port(), (),
                              "admit Grafana in the monitoring namespace's policies"))

    # Each gang's ranks reach rank 0 and each other on any port (torch.distributed, MPI over ssh, Ray GCS).
    gangs: dict[str, list] = {}
    for pod, ep in pods:
        owner = (pod["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION)
        if owner:
            gangs.setdefault(owner, []).append((pod, ep))
    for owner, members in gangs.items():
        for (pa, a), (pb, b) in permutations(members, 2):
            flows.append(Flow(f"gang {owner}: {a.name} to {b.name}", a, b, ANY_PORT, (obj_id(pa), obj_id(pb)), policy_fix))
    return flows


def _ray_flows(model: Model, clients: dict[str, Endpoint], pods: list, policy_fix: str) -> list[Flow]:
    if not pods:
        return []
    from trnctl import operators
    from trnctl.operators import kuberay
    flows: list[Flow] = []
    # The KubeRay operator polls each Ray head's dashboard to follow RayJobs
    # (ray-project/kuberay@v1.7.0 ray-operator/controllers/ray/utils/dashboard_httpclient).
    heads = [(p, ep) for p, ep in pods if ep.labels.get(kuberay.NODE_TYPE_LABEL) == "head"]
    if "kuberay-operator" in clients:
        flows += [Flow(f"the KubeRay operator polls the Ray dashboard of {ep.name}", clients["kuberay-operator"], ep,
                       kuberay.DASHBOARD_PORT, (obj_id(p),), policy_fix) for p, ep in heads]
    # The RayJob submitter (a Job's pod KubeRay creates) submits to the dashboard address it is given
    # (kuberay.submitter_job: env RAY_DASHBOARD_ADDRESS), resolved by cluster DNS to the head pod.
    by_name = {p["metadata"]["name"]: (p, ep) for p, ep in pods}
    dns = operators.dns_records(model.workload_objects_with_controllers, model.operator_context)
    for pod, ep in pods:
        for c in (pod.get("spec") or {}).get("containers") or []:
            address = next((e.get("value") for e in c.get("env") or [] if e.get("name") == "RAY_DASHBOARD_ADDRESS"), None)
            if not address:
                continue
            host, _, port = address.removeprefix("http://").partition(":")
            target = by_name.get(dns.get(host, ""))
            if target is None:
                flows.append(Flow(f"the RayJob submitter {ep.name} submits to {address}, which no pod answers", ep, ep,
                                  UNRESOLVED, (obj_id(pod),), "point the RayJob at an existing RayCluster"))
                continue
            flows.append(Flow(f"the RayJob submitter {ep.name} submits to {target[1].name}", ep, target[1],
                              int(port or kuberay.DASHBOARD_PORT), (obj_id(pod), obj_id(target[0])), policy_fix))
    return flows


def _outsider(namespace: str = "default") -> Endpoint:
    return Endpoint(f"any pod in namespace {namespace}", namespace, {}, {})


def check(model: Model) -> list[Finding]:
    findings: list[Finding] = []
    flows = needed_flows(model)
    for f in flows:
        if f.port == UNRESOLVED:
            findings.append(Finding(f"{RULE}/unresolved", MANDATORY, f.objects, f"{f.why}; fix: {f.fix}"))
        elif not allowed(model, f.src, f.dst, f.port):
            port = "every port" if f.port is ANY_PORT else f"port {f.port}"
            findings.append(Finding(f"{RULE}/blocked", MANDATORY, f.objects or (f.dst.name,),
                                    f"{f.why}: blocked on {port} by NetworkPolicies "
                                    f"{', '.join(obj_id(p) for p in selecting(model.of_kind('NetworkPolicy'), f.dst, 'Ingress'))}"
                                    f"; fix: {f.fix}"))
    findings += _over_open(model, flows)
    return findings


def _over_open(model: Model, flows: list[Flow]) -> list[Finding]:
    """Nothing else opens: a platform client, or a pod of a namespace that is no party to any
    needed flow, reaching a workload pod on a port no needed flow uses."""
    needed = {(f.src.name, f.dst.name, f.port) for f in flows}
    probes = [*platform_clients(model).values(), _outsider()]
    findings = []
    for pod in model.pods:
        dst = Endpoint.of_pod(pod)
        if not selecting(model.of_kind("NetworkPolicy"), dst, "Ingress"):
            continue  # a namespace without policies is open by design; nothing claims otherwise
        for src in probes:
            if src.namespace == dst.namespace:
                continue
            for port in sorted(dst.declared_ports() | {22}):
                if allowed(model, src, dst, port) and (src.name, dst.name, port) not in needed:
                    findings.append(Finding(f"{RULE}/over-open", MANDATORY, (obj_id(pod),),
                                            f"{src.name} reaches {dst.name} on port {port}, which no platform flow needs; "
                                            f"fix: narrow the NetworkPolicy peers/ports (infra/storage.py workload_ingress_policy)"))
    return findings

