"""List prices (infra/data/prices.json: region, date and source inside) as typed objects.

The program prices its dashboards' and alerts' $/h from them (infra/monitoring), and
trnctl's cost estimate prices whole stacks; both read the same file through here.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).resolve().parent / "data" / "prices.json"


class PriceError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Prices:
    region: str
    as_of: str
    hours_per_month: int
    ec2_per_hour: dict[str, float]
    eks_control_plane: float
    nat_gateway: float
    public_ipv4: float
    interface_endpoint_per_az: float
    ebs_gp3_gb_month: float
    cloudwatch_metrics_per_1000: float
    fsx_gb_month: dict[str, dict[str, float]]
    capacity_block_per_hour: dict[str, float] = field(default_factory=dict)
    capacity_block_as_of: str = ""

    def instance(self, instance_type: str) -> float:
        if instance_type not in self.ec2_per_hour:
            raise PriceError(f"{PRICES_FILE}: no on-demand price for {instance_type} in {self.region}; "
                             f"priced types: {', '.join(sorted(self.ec2_per_hour))}")
        return self.ec2_per_hour[instance_type]

    def capacity_block(self, instance_type: str) -> float:
        """Effective hourly rate of one instance in a Capacity Block for ML."""
        if instance_type not in self.capacity_block_per_hour:
            raise PriceError(f"{PRICES_FILE}: no Capacity Block price for {instance_type} in {self.region}; "
                             f"priced types: {', '.join(sorted(self.capacity_block_per_hour)) or 'none'}")
        return self.capacity_block_per_hour[instance_type]

    def fsx(self, deployment_type: str, throughput: int) -> float:
        tiers = self.fsx_gb_month.get(deployment_type)
        if not tiers:
            raise PriceError(f"{PRICES_FILE}: no FSx for Lustre price for {deployment_type} in {self.region}; "
                             f"priced: {', '.join(sorted(self.fsx_gb_month))}")
        if len(tiers) == 1:  # no throughput tiers (scratch)
            return next(iter(tiers.values()))
        if str(throughput) not in tiers:
            raise PriceError(f"{PRICES_FILE}: no {deployment_type} price for {throughput} MB/s/TiB in {self.region}; "
                             f"priced tiers: {', '.join(tiers)}")
        return tiers[str(throughput)]


@functools.lru_cache(maxsize=None)
def _price_data() -> dict[str, Any]:
    return json.loads(PRICES_FILE.read_text())


def priced_regions() -> tuple[str, ...]:
    return tuple(sorted(_price_data()["regions"]))


def has_prices(region: str) -> bool:
    """Whether infra/data/prices.json has list prices for the region. The offerings snapshot
    covers every region with Trainium/Inferentia; prices only some: a region without them
    renders with its cost estimate marked "no price data" (no_price_data()) and no $/h rules."""
    return region in _price_data()["regions"]


def no_price_data(region: str) -> str:
    """The one line a cost estimate prints for a region the price file does not cover."""
    return (f"no price data for {region}: {PRICES_FILE.relative_to(PRICES_FILE.parents[2])} prices "
            f"{', '.join(priced_regions())}; add a {region!r} entry there (sources in its _source) to get an estimate")


def load_prices(region: str) -> Prices:
    data = _price_data()
    if region not in data["regions"]:
        raise PriceError(f"{PRICES_FILE}: no prices for region {region!r}; priced regions: {', '.join(sorted(data['regions']))}")
    r = data["regions"][region]
    return Prices(region=region, as_of=r["asOf"], hours_per_month=data["hoursPerMonth"],
                  ec2_per_hour=r["ec2OnDemandPerHour"], eks_control_plane=r["eksControlPlanePerHour"],
                  nat_gateway=r["natGatewayPerHour"], public_ipv4=r["publicIpv4PerHour"],
                  interface_endpoint_per_az=r["vpcInterfaceEndpointPerAzHour"], ebs_gp3_gb_month=r["ebsGp3PerGbMonth"],
                  cloudwatch_metrics_per_1000=r["cloudwatchGetMetricDataPer1000Metrics"],
                  fsx_gb_month=r["fsxLustrePerGbMonth"], capacity_block_per_hour=r.get("capacityBlockPerHour", {}),
                  capacity_block_as_of=r.get("capacityBlockNotes", {}).get("asOf", ""))
