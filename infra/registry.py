"""ECR repositories for the workload images, the private artifacts bucket, and the
optional monthly budget alert."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.config import BudgetConfig


def ecr_lifecycle_policy(keep_tagged: int = 50) -> dict:
    """Untagged layers go after a day; only the newest tagged images are kept."""
    return {"rules": [
        {"rulePriority": 1, "description": "expire untagged images",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1},
         "action": {"type": "expire"}},
        {"rulePriority": 2, "description": f"keep the newest {keep_tagged} tagged images",
         "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_tagged},
         "action": {"type": "expire"}},
    ]}


@dataclass
class RegistryArgs:
    cluster_name: str
    repositories: tuple[str, ...]
    force_destroy: bool  # non-prod: `pulumi destroy` removes repositories and bucket with their contents
    budget: BudgetConfig | None
    tags: dict[str, str]


class Registry(pulumi.ComponentResource):
    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.key = aws.kms.Key(f"{name}-artifacts", description=f"artifacts and images of {args.cluster_name}",
                               enable_key_rotation=True, deletion_window_in_days=7, tags=args.tags, opts=child)
        self.repositories: dict[str, aws.ecr.Repository] = {}
        for repo in args.repositories:
            r = aws.ecr.Repository(
                f"{name}-{repo}", name=f"{args.cluster_name}/{repo}", image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(
                    encryption_type="KMS", kms_key=self.key.arn)],
                force_delete=args.force_destroy, tags=args.tags, opts=child)
            aws.ecr.LifecyclePolicy(f"{name}-{repo}", repository=r.name, policy=json.dumps(ecr_lifecycle_policy()),
                                    opts=child)
            self.repositories[repo] = r

        self.bucket = aws.s3.Bucket(f"{name}-artifacts", bucket_prefix=f"{args.cluster_name}-artifacts-",
                                      force_destroy=args.force_destroy, tags=args.tags, opts=child)
        block = aws.s3.BucketPublicAccessBlock(f"{name}-artifacts", bucket=self.bucket.id, block_public_acls=True,
                                               block_public_policy=True, ignore_public_acls=True,
                                               restrict_public_buckets=True, opts=child)
        aws.s3.BucketOwnershipControls(f"{name}-artifacts", bucket=self.bucket.id,
                                       rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
                                       opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-artifacts", bucket=self.bucket.id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms", kms_master_key_id=self.key.arn),
                bucket_key_enabled=True)], opts=child)
        aws.s3.BucketVersioning(f"{name}-artifacts", bucket=self.bucket.id,
                                  versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
                                  opts=child)
        aws.s3.BucketPolicy(f"{name}-artifacts-tls", bucket=self.bucket.id,
                            policy=self.bucket.arn.apply(lambda arn: json.dumps(iam.tls_only_bucket_policy(arn))),
                            opts=pulumi.ResourceOptions(parent=self, depends_on=[block]))

        if args.budget:
            aws.budgets.Budget(
                f"{name}-budget", name=f"{args.cluster_name}-monthly", budget_type="COST",
                limit_amount=f"{args.budget.monthly_limit_usd:.2f}", limit_unit="USD", time_unit="MONTHLY",
                cost_filters=[aws.budgets.BudgetCostFilterArgs(name="TagKeyValue",
                                                               values=[f"user:trn-platform/cluster${args.cluster_name}"])],
                notifications=[aws.budgets.BudgetNotificationArgs(
                    comparison_operator="GREATER_THAN", threshold=threshold, threshold_type="PERCENTAGE",
                    notification_type=kind, subscriber_email_addresses=list(args.budget.alert_emails))
                    for threshold, kind in ((80, "FORECASTED"), (100, "ACTUAL"))],
                opts=child)
        self.register_outputs({"bucket": self.bucket.bucket})
