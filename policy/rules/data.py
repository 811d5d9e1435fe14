"""Data rules: private, encrypted, TLS-only storage; encrypted queues, file systems and cluster secrets; a restricted API endpoint."""
from __future__ import annotations

from typing import Any, Iterator

from policy.rules.base import Resource, resource_rule, stack_rule
from policy.rules.helpers import (
    as_list,
    is_unknown,
    policy_document,
    refers_to_bucket,
    statements,
    truthy,
)
from policy.rules.iam import _principals

BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
SSE_CONFIGS = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
               "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
PUBLIC_ACLS = ("public-read", "public-read-write", "authenticated-read")
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def _bound(resources: list[Resource], types: tuple[str, ...], bucket: Resource) -> list[Resource]:
    return [r for r in resources if r.type in types and refers_to_bucket(r, bucket)]


@stack_rule("s3-private", "mandatory",
            what="every bucket has a public access block with all four settings true and no public ACL",
            why="artifacts, checkpoints and datasets are private; one public policy or ACL exposes all of them",
            fix="add aws.s3.BucketPublicAccessBlock(bucket=..., block_public_acls=True, block_public_policy=True, "
                "ignore_public_acls=True, restrict_public_buckets=True)")
def check_s3_private(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        if bucket.props.get("acl") in PUBLIC_ACLS:
            yield bucket, f"acl is {bucket.props['acl']!r}"
        blocks = _bound(resources, (PUBLIC_ACCESS_BLOCK,), bucket)
        if not blocks:
            yield bucket, "no BucketPublicAccessBlock refers to this bucket"
        for b in blocks:
            off = [f for f in PUBLIC_ACCESS_FLAGS if not truthy(b.props.get(f))]
            if off:
                yield bucket, f"BucketPublicAccessBlock {b.name}: {', '.join(off)} not true"


def _sse_algorithms(rules: Any) -> list[str]:
    return [((rule or {}).get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm", "")
            for rule in as_list(rules)]


@stack_rule("s3-encrypted", "mandatory",
            what="every bucket has a default server-side encryption configuration (aws:kms or AES256)",
            why="an explicit configuration states which key protects the data and survives account default changes",
            fix="add aws.s3.BucketServerSideEncryptionConfiguration with sse_algorithm 'aws:kms' and the platform key")
def check_s3_encrypted(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        inline = (bucket.props.get("serverSideEncryptionConfiguration") or {}).get("rule")
        algorithms = _sse_algorithms(inline) if inline else []
        for cfg in _bound(resources, SSE_CONFIGS, bucket):
            algorithms += _sse_algorithms(cfg.props.get("rules"))
        if not any(a in ("aws:kms", "aws:kms:dsse", "AES256") for a in algorithms):
            yield bucket, "no server-side encryption configuration refers to this bucket"


def denies_insecure_transport(doc: dict | None) -> bool:
    for s in statements(doc):
        cond = (s.get("Condition") or {}).get("Bool") or {}
        actions = as_list(s.get("Action"))
        everyone = s.get("Principal") == "*" or "*" in _principals(s, "AWS")
        if (s.get("Effect") == "Deny" and str(cond.get("aws:SecureTransport")).lower() == "false"
                and everyone and ("s3:*" in actions or "*" in actions)):
            return True
    return False


@stack_rule("s3-tls-only", "mandatory",
            what="every bucket policy denies s3:* to everyone when aws:SecureTransport is false",
            why="without it, clients may read and write artifacts over plain HTTP",
            fix="add a BucketPolicy statement {Effect: Deny, Principal: '*', Action: 's3:*', Resource: [bucket, bucket/*], "
                "Condition: {Bool: {aws:SecureTransport: 'false'}}}")
def check_s3_tls_only(resources: list[Resource], outputs: dict) -> Iterator[tuple[Resource, str]]:
    for bucket in (r for r in resources if r.type in BUCKETS):
        docs = [policy_document(bucket.props.get("policy"))]
        docs += [policy_document(p.props.get("policy")) for p in _bound(resources, (BUCKET_POLICY,), bucket)]
        if any(is_unknown(p.props.get("policy")) for p in _bound(resources, (BUCKET_POLICY,), bucket)):
            continue
        if not any(denies_insecure_transport(d) for d in docs):
            yield bucket, "no bucket policy denies requests with aws:SecureTransport false"


@resource_rule("sqs-encrypted", "mandatory", ("aws:sqs/queue:Queue",),
               what="SQS queues are encrypted at rest (SQS-managed SSE or a KMS key)",
               why="queue messages (e.g. Karpenter interruption events) name instances and accounts",
               fix="set sqs_managed_sse_enabled=True or kms_master_key_id")
def check_sqs_encrypted(r: Resource) -> Iterator[str]:
    if not truthy(r.props.get("sqsManagedSseEnabled")) and not r.props.get("kmsMasterKeyId"):
        yield "neither sqsManagedSseEnabled nor kmsMasterKeyId is set"


@resource_rule("fsx-encrypted", "mandatory", ("aws:fsx/lustreFileSystem:LustreFileSystem",),
               what="persistent FSx for Lustre file systems encrypt at rest with a customer-managed KMS key "
                    "(scratch ones always use an FSx-managed key)",
               why="the shared file system holds datasets, checkpoints and model weights; a key you own can be "
                   "audited and revoked",
               fix="set kms_key_id to the platform's KMS key (PERSISTENT_1/PERSISTENT_2 deployment types)")
def check_fsx_encrypted(r: Resource) -> Iterator[str]:
    # Every FSx for Lustre file system is encrypted at rest; scratch ones only ever with an
    # FSx-managed key (they take no kmsKeyId), so the rule applies to persistent ones.
    dtype = str(r.props.get("deploymentType") or "SCRATCH_1")
    if dtype.startswith("PERSISTENT") and not r.props.get("kmsKeyId"):
        yield f"{dtype} without kmsKeyId: data is encrypted with the AWS-managed key only"


EKS_CLUSTERS = ("eks:index:Cluster", "aws:eks/cluster:Cluster")
REQUIRED_LOG_TYPES = ("api", "audit", "authenticator")


@resource_rule("eks-secrets-encrypted", "mandatory", EKS_CLUSTERS,
               what="the EKS cluster envelope-encrypts Kubernetes Secrets with a KMS key",
               why="Secrets (Hugging Face tokens, credentials) are otherwise only protected by etcd's disk encryption",
               fix="eks.Cluster(encryption_config_key_arn=key.arn)")
def check_eks_secrets(r: Resource) -> Iterator[str]:
    if r.type == "eks:index:Cluster":
        key = r.props.get("encryptionConfigKeyArn")
    else:
        key = next((((c.get("provider") or {}).get("keyArn")) for c in as_list(r.props.get("encryptionConfig"))
                    if "secrets" in (c.get("resources") or [])), None)
    if not key:
        yield "no KMS key for secrets encryption"


@resource_rule("eks-control-plane-logging", "mandatory", EKS_CLUSTERS,
               what="control-plane logs include api, audit and authenticator",
               why="without audit and authenticator logs there is no record of who did what in the cluster",
               fix="enabled_cluster_log_types=['api', 'audit', 'authenticator', ...]")
def check_eks_logging(r: Resource) -> Iterator[str]:
    enabled = r.props.get("enabledClusterLogTypes")
    if is_unknown(enabled):
        return
    missing = [t for t in REQUIRED_LOG_TYPES if t not in (enabled or [])]
    if missing:
        yield f"enabledClusterLogTypes lacks {', '.join(missing)}"


OPEN_CIDRS = ("0.0.0.0/0", "::/0")


@resource_rule("eks-public-endpoint", "mandatory", EKS_CLUSTERS,
               what="the public API endpoint is off, or limited to configured CIDR blocks (never 0.0.0.0/0)",
               why="an API endpoint open to the internet exposes the cluster to credential stuffing and API exploits",
               fix="set endpoint.publicAccess: false, or endpoint.publicAccessCidrs to your office/VPN ranges")
def check_eks_endpoint(r: Resource) -> Iterator[str]:
    props = r.props if r.type == "eks:index:Cluster" else (r.props.get("vpcConfig") or {})
    public = props.get("endpointPublicAccess")
    if public is False or (isinstance(public, str) and public.lower() == "false"):
        return
    cidrs = props.get("publicAccessCidrs")
    if is_unknown(cidrs):
        return
    if not cidrs:
        yield "public endpoint on (the default) with no publicAccessCidrs: open to 0.0.0.0/0"
    elif any(c in OPEN_CIDRS for c in cidrs):
        yield f"publicAccessCidrs {cidrs} include an open range"


@resource_rule("ecr-immutable-tags", "mandatory", ("aws:ecr/repository:Repository",),
               what="ECR repositories have immutable tags",
               why="the image pinning rule trusts exact version tags; a mutable tag can be overwritten under a running workload",
               fix="image_tag_mutability='IMMUTABLE'")
def check_ecr_immutable(r: Resource) -> Iterator[str]:
    if r.props.get("imageTagMutability") != "IMMUTABLE":
        yield f"imageTagMutability is {r.props.get('imageTagMutability', 'MUTABLE (default)')!r}"


@resource_rule("ecr-scan-on-push", "advisory", ("aws:ecr/repository:Repository",),
               what="ECR repositories scan images on push",
               why="basic scanning flags known CVEs in the Neuron/PyTorch base layers at no cost",
               fix="image_scanning_configuration={'scan_on_push': True}")
def check_ecr_scan(r: Resource) -> Iterator[str]:
    if not truthy((r.props.get("imageScanningConfiguration") or {}).get("scanOnPush")):
        yield "imageScanningConfiguration.scanOnPush is not true"


@resource_rule("kms-key-rotation", "advisory", ("aws:kms/key:Key",),
               what="symmetric KMS keys rotate yearly",
               why="rotation limits how much data one key version protects; AWS does it transparently",
               fix="enable_key_rotation=True")
def check_kms_rotation(r: Resource) -> Iterator[str]:
    if r.props.get("customerMasterKeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT" and \
            not truthy(r.props.get("enableKeyRotation")):
        yield "enableKeyRotation is not true"
