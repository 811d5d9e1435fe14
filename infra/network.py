"""VPC across the availability zones (by AZ ID) that offer the accelerator instance types.

AZ names map to different physical zones in every account; AZ IDs do not. The zones are
chosen from EC2's instance type offerings per AZ ID, so the trn1/inf2 pools always have
subnets where their instance types exist.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config import ConfigError, NetworkConfig, NodePoolConfig

# Interface endpoints that keep node bootstrap and image pulls off the NAT gateway
# (ECR layers themselves come through the S3 gateway endpoint, which is free).
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts")


@dataclass(frozen=True)
class SubnetPlan:
    az_id: str
    public_cidr: str
    private_cidr: str


def plan_subnets(vpc_cidr: str, az_ids: list[str]) -> list[SubnetPlan]:
    """Private /19-sized (of a /16) subnets for nodes and pods, small public ones for NAT/LBs.

    The VPC is cut in two halves: private subnets take equal blocks of the first half
    (the VPC CNI gives every pod a VPC address), public ones small blocks of the second.
    """
    vpc = ipaddress.ip_network(vpc_cidr)
    private_half, public_half = list(vpc.subnets(prefixlen_diff=1))
    private = list(private_half.subnets(prefixlen_diff=2))  # up to 4 AZs
    public = list(public_half.subnets(new_prefix=min(vpc.prefixlen + 8, 28)))
    return [SubnetPlan(az, str(public[i]), str(private[i])) for i, az in enumerate(az_ids)]


def choose_az_ids(offerings: dict[str, set[str]], pools: tuple[NodePoolConfig, ...], network: NetworkConfig,
                  all_zone_ids: list[str]) -> list[str]:
    """Pick AZ IDs: explicit ones if configured (checked), else those offering the most
    accelerator pools. Every accelerator pool must get at least one AZ offering it."""
    accel = [p for p in pools if p.is_accelerator]

    def pool_zones(p: NodePoolConfig) -> set[str]:
        zones: set[str] = set()
        for t in p.instance_types:
            zones |= offerings.get(t, set())
        return zones

    if network.availability_zone_ids:
        chosen = list(network.availability_zone_ids)
    else:
        def score(az: str) -> tuple:
            return (-sum(az in pool_zones(p) for p in accel), all_zone_ids.index(az))
        chosen = sorted(all_zone_ids, key=score)[: network.az_count]
    problems = []
    for p in accel:
        if not pool_zones(p) & set(chosen):
            offered = sorted(pool_zones(p))
            problems.append(f"nodePools ({p.name}): none of the chosen AZ IDs {chosen} offers "
                            f"{', '.join(p.instance_types)}; AZ IDs offering them: {', '.join(offered) or 'none in this region'}"
                            f" (set network.availabilityZoneIds)")
    if problems:
        raise ConfigError(problems)
    return chosen


def pool_zone_ids(pool: NodePoolConfig, offerings: dict[str, set[str]], chosen: list[str]) -> list[str]:
    """The chosen AZ IDs where at least one of the pool's instance types is offered; a single one
    for a multi-node EFA pool (README, "EFA gangs in one Availability Zone"): EFA traffic does not
    cross AZs, and the first chosen AZ offering the pool is where the accelerator AZs start, so it is
    also the FSx file system's AZ (infra/__main__.py accel_azs[0]). A pool of reserved capacity only
    (ODCRs, Capacity Blocks) keeps every zone: each reservation is in one AZ and Karpenter launches
    reserved nodes there, a zone picked here could exclude it."""
    zones = [az for az in chosen if any(az in offerings.get(t, set()) for t in pool.instance_types)]
    if pool.efa and pool.max_nodes > 1 and not reserved_only(pool):
        return zones[:1]
    return zones


def reserved_only(pool: NodePoolConfig) -> bool:
    return bool(pool.capacity_types) and set(pool.capacity_types) <= {"reserved", "capacity-block"}


def fetch_offerings(instance_types: list[str]) -> dict[str, set[str]]:
    """EC2 DescribeInstanceTypeOfferings by AZ ID (answered from a snapshot offline)."""
    result = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone-id",
        filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=sorted(set(instance_types)))])
    out: dict[str, set[str]] = {}
    for t, loc in zip(result.instance_types, result.locations):
        out.setdefault(t, set()).add(loc)
    return out


@dataclass
class NetworkArgs:
    cluster_name: str
    config: NetworkConfig
    az_ids: list[str]
    region: str
    tags: dict[str, str]


class Network(pulumi.ComponentResource):
    """VPC, public/private subnets per AZ ID, NAT, and endpoints."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}
        self.vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=args.config.vpc_cidr, enable_dns_hostnames=True,
                               enable_dns_support=True, tags={**args.tags, "Name": args.cluster_name}, opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, tags=args.tags, opts=child)

        public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=self.vpc.id, tags=args.tags, opts=child)
        aws.ec2.Route(f"{name}-public-default", route_table_id=public_rt.id, destination_cidr_block="0.0.0.0/0",
                      gateway_id=igw.id, opts=child)

        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        private_tables: list[aws.ec2.RouteTable] = []
        nats: list[aws.ec2.NatGateway] = []
        for plan in plan_subnets(args.config.vpc_cidr, args.az_ids):
            pub = aws.ec2.Subnet(f"{name}-public-{plan.az_id}", vpc_id=self.vpc.id, cidr_block=plan.public_cidr,
                                 availability_zone_id=plan.az_id, map_public_ip_on_launch=False,
                                 tags={**args.tags, **cluster_tag, "kubernetes.io/role/elb": "1",
                                       "Name": f"{args.cluster_name}-public-{plan.az_id}"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{plan.az_id}", subnet_id=pub.id,
                                          route_table_id=public_rt.id, opts=child)
            priv = aws.ec2.Subnet(f"{name}-private-{plan.az_id}", vpc_id=self.vpc.id, cidr_block=plan.private_cidr,
                                  availability_zone_id=plan.az_id,
                                  tags={**args.tags, **cluster_tag, "kubernetes.io/role/internal-elb": "1",
                                        "karpenter.sh/discovery": args.cluster_name,
                                        "Name": f"{args.cluster_name}-private-{plan.az_id}"}, opts=child)
            self.public_subnets.append(pub)
            self.private_subnets.append(priv)
            if args.config.nat_gateways == "per-az" or not nats:
                eip = aws.ec2.Eip(f"{name}-nat-{plan.az_id}", domain="vpc", tags=args.tags, opts=child)
                nats.append(aws.ec2.NatGateway(f"{name}-nat-{plan.az_id}", allocation_id=eip.id, subnet_id=pub.id,
                                               tags=args.tags, opts=pulumi.ResourceOptions(parent=self, depends_on=[igw])))
            rt = aws.ec2.RouteTable(f"{name}-private-{plan.az_id}", vpc_id=self.vpc.id, tags=args.tags, opts=child)
            aws.ec2.Route(f"{name}-private-{plan.az_id}-default", route_table_id=rt.id,
                          destination_cidr_block="0.0.0.0/0", nat_gateway_id=nats[-1].id, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{plan.az_id}", subnet_id=priv.id, route_table_id=rt.id,
                                          opts=child)
            private_tables.append(rt)

        aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
                            vpc_endpoint_type="Gateway", route_table_ids=[t.id for t in private_tables],
                            tags=args.tags, opts=child)
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints", vpc_id=self.vpc.id, description="HTTPS from the VPC to interface endpoints",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443,
                                                      cidr_blocks=[args.config.vpc_cidr], description="HTTPS from VPC")],
            tags=args.tags, opts=child)
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(f"{name}-{service.replace('.', '-')}", vpc_id=self.vpc.id,
                                service_name=f"com.amazonaws.{args.region}.{service}", vpc_endpoint_type="Interface",
                                private_dns_enabled=True, subnet_ids=[s.id for s in self.private_subnets],
                                security_group_ids=[endpoint_sg.id], tags=args.tags, opts=child)

        self.vpc_id = self.vpc.id
        self.private_subnet_ids = [s.id for s in self.private_subnets]
        self.public_subnet_ids = [s.id for s in self.public_subnets]
        self.az_ids = args.az_ids
        self.register_outputs({"vpcId": self.vpc.id})
