"""Pulumi mock runtime that records every registered resource, for offline render and tests.

The recorder answers like a cloud would for the attributes our programs read back
(ids, ARNs, URLs, the EKS kubeconfig): inputs that depend on them would otherwise be
silently dropped. Invokes (data sources) are answered from infra/data/ snapshots.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from infra import catalog
from stackfiles.records import RecordedResource, unwrap_secrets

ACCOUNT_ID = "123456789012"


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:17]


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes; the monitor below records them."""

    def __init__(self, region: str, stack_references: dict[str, dict[str, Any]] | None = None):
        self.region = region
        self.stack_references = stack_references or {}

    # -- resources -----------------------------------------------------------------
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        inputs = unwrap_secrets(args.inputs)
        name = args.name
        typ = args.typ
        h = _short_hash(typ, name)
        state = dict(inputs)
        rid = f"{name}-{h[:8]}"
        service = typ.split(":")[1].split("/")[0] if typ.startswith("aws:") else ""
        if typ.startswith("aws:"):
            physical = inputs.get("name") or f"{name}-{h[:7]}"
            state.setdefault("name", physical)
            state.setdefault("arn", f"arn:aws:{service}:{self.region}:{ACCOUNT_ID}:{physical}")
        if typ == "aws:ec2/vpc:Vpc":
            rid = f"vpc-{h}"
        elif typ == "aws:ec2/subnet:Subnet":
            rid = f"subnet-{h}"
        elif typ == "aws:ec2/securityGroup:SecurityGroup":
            rid = f"sg-{h}"
        elif typ == "aws:ec2/natGateway:NatGateway":
            rid = f"nat-{h}"
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            rid = f"lt-{h}"
            state["latestVersion"] = 1
        elif typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{state['name']}"
        elif typ == "aws:iam/policy:Policy":
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:policy/{state['name']}"
        elif typ == "aws:iam/instanceProfile:InstanceProfile":
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{state['name']}"
        elif typ == "aws:sqs/queue:Queue":
            state["url"] = f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT_ID}/{state['name']}"
            state["arn"] = f"arn:aws:sqs:{self.region}:{ACCOUNT_ID}:{state['name']}"
        elif typ in ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"):
            bucket = inputs.get("bucket") or f"{name}-{h[:8]}"
            rid = bucket
            state.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}", bucketRegionalDomainName=f"{bucket}.s3.{self.region}.amazonaws.com")
        elif typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com/{state['name']}"
            state["arn"] = f"arn:aws:ecr:{self.region}:{ACCOUNT_ID}:repository/{state['name']}"
        elif typ == "aws:kms/key:Key":
            rid = f"{h[:8]}-kms"
            state.update(keyId=rid, arn=f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:key/{rid}")
        elif typ == "aws:fsx/lustreFileSystem:LustreFileSystem":
            rid = f"fs-{h}"
            state.update(dnsName=f"{rid}.fsx.{self.region}.amazonaws.com", mountName=h[:8],
                         arn=f"arn:aws:fsx:{self.region}:{ACCOUNT_ID}:file-system/{rid}")
        elif typ == "random:index/randomPassword:RandomPassword":
            state["result"] = "render-placeholder-" + h  # the provider generates it at `pulumi up`
        elif typ == "docker-build:index:Image":
            state["digest"] = "sha256:" + hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        elif typ == "eks:index:Cluster":
            cluster = inputs.get("name", name)
            kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": cluster, "cluster": {
                "server": f"https://{h.upper()}.gr7.{self.region}.eks.amazonaws.com"}}],
                "contexts": [], "users": []}
            state.update(
                kubeconfig=kubeconfig, kubeconfigJson=json.dumps(kubeconfig),
                clusterSecurityGroupId=f"sg-{_short_hash(cluster, 'cluster')}",
                oidcProviderArn=f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/oidc.eks.{self.region}.amazonaws.com/id/{h.upper()}",
                oidcProviderUrl=f"https://oidc.eks.{self.region}.amazonaws.com/id/{h.upper()}",
                oidcIssuer=f"oidc.eks.{self.region}.amazonaws.com/id/{h.upper()}",
            )
            return f"{cluster}", state
        elif typ == "pulumi:pulumi:StackReference":
            ref = inputs.get("name", name)
            if ref not in self.stack_references:
                raise KeyError(f"stack reference {ref!r} is not rendered here; known: {sorted(self.stack_references)}")
            data = self.stack_references[ref]
            return ref, {"name": ref, "outputs": data["outputs"], "secretOutputNames": data.get("secret", [])}
        return rid, state

    # -- invokes -------------------------------------------------------------------
    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None] | dict:
        token = args.token
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/render", "userId": "RENDER"}
        if token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            zones = catalog.zone_names(self.region)
            return {"names": list(zones.values()), "zoneIds": list(zones), "id": self.region}
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": "render-placeholder-registry-password",
                    "proxyEndpoint": f"https://{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com",
                    "authorizationToken": "", "expiresAt": "", "id": self.region}
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            filters = {f["name"]: f["values"] for f in args.args.get("filters", [])}
            types = filters.get("instance-type", [])
            rows = [(az, t) for t in types for az in catalog.snapshot_offerings(self.region, t)]
            return {"instanceTypes": [t for _, t in rows], "locations": [az for az, _ in rows],
                    "locationTypes": ["availability-zone-id"] * len(rows), "id": self.region}
        raise NotImplementedError(f"the offline render has no answer for invoke {token}; add one in trnctl/mocks.py")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, also recording parent and dependencies of each registration."""

    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            state = self.resources[response.urn].state if response.urn in self.resources else {}
            self.recorded.append(RecordedResource(
                type=request.type, name=request.name, urn=response.urn, inputs=_plain(inputs),
                parent=request.parent or None, depends_on=sorted(set(request.dependencies)),
                custom=bool(request.custom), state=state, options=resource_options(request)))
        return response


    def ReadResource(self, request):  # noqa: N802 (gRPC method name)
        """Reads are not registrations; a StackReference is recorded (name only, never its outputs) so
        a render says which stacks it reads (trnctl/cluster groups workload renders with their platform)."""
        response = super().ReadResource(request)
        if request.type == "pulumi:pulumi:StackReference":
            ref = rpc.deserialize_properties(request.properties).get("name") or request.id
            self.recorded.append(RecordedResource(type=request.type, name=request.name, urn=response.urn,
                                                  inputs={"name": ref}, parent=request.parent or None, depends_on=[],
                                                  custom=True))
        return response


def resource_options(request) -> dict[str, Any]:
    """The behaviour-changing resource options of one registration, read from the
    RegisterResourceRequest the SDK sends the engine (pulumi/pulumi sdk/proto/resource.proto:
    customTimeouts, deleteBeforeReplace(+Defined), ignoreChanges, protect, retainOnDelete,
    replaceOnChanges, deletedWith). The mock monitor receives exactly the request `pulumi up`
    would send, so this is what the engine would act on, not a re-reading of our own code.
    dependsOn is recorded separately (`dependsOn`, already expanded from components to their
    custom resources by the SDK)."""
    out: dict[str, Any] = {}
    timeouts = {k: getattr(request.customTimeouts, k) for k in ("create", "update", "delete")
                if getattr(request.customTimeouts, k)}
    if timeouts:
        out["customTimeouts"] = timeouts
    if request.deleteBeforeReplaceDefined:
        out["deleteBeforeReplace"] = bool(request.deleteBeforeReplace)
    if request.ignoreChanges:
        out["ignoreChanges"] = list(request.ignoreChanges)
    for flag in ("protect", "retainOnDelete"):  # false is the engine's default: recorded only when set
        if getattr(request, flag):
            out[flag] = True
    if request.replaceOnChanges:
        out["replaceOnChanges"] = list(request.replaceOnChanges)
    if request.deletedWith:
        out["deletedWith"] = request.deletedWith
    return out


def _plain(value: Any) -> Any:
    """Unknown values (outputs not known at preview) become a marker instead of objects."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is rpc.UNKNOWN or type(value).__name__ == "Unknown":
        return "[unknown]"
    # Pulumi's wire format (protobuf Struct) carries every number as a double.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
