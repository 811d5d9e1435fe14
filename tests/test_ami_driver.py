"""The host Neuron driver of the pinned EKS AL2023 Neuron AMI against the Neuron runtime of each
track's images: one AMI release serves every Neuron pool, so its driver must suit both runtimes.
Driver per AMI release: awslabs/amazon-eks-ami CHANGELOG.md; runtime per SDK release and the
incompatibilities: the Neuron release notes (sources in infra/versions.py)."""
from __future__ import annotations

import pytest

from infra import versions


def test_the_pinned_ami_release_has_a_recorded_neuron_driver():
    assert versions.AL2023_AMI_ALIAS == f"al2023@{versions.AL2023_AMI_RELEASE}"
    assert versions.AL2023_AMI_RELEASE in versions.AL2023_AMI_NEURON_DRIVERS


def test_the_pinned_ami_driver_runs_both_tracks_runtimes():
    assert versions.ami_driver_problems() == {"xla": [], "native": []}
    # what the tracks run: SDK 2.26.1 (runtime 2.28.23.0, exact) and 2.34.0 (at least 2.33.0's 2.35.30.0)
    assert versions.neuron_runtime(versions.neuron_track("xla")["neuron_sdk"]) == ("2.28.23.0", True)
    assert versions.neuron_runtime(versions.neuron_track("native")["neuron_sdk"]) == ("2.35.30.0", False)


@pytest.mark.parametrize(("driver", "runtime", "expected"), [
    # runtime 2.32+ (SDK 2.30+ DLCs) on a driver 2.26 host: the containers.rst 2.30.0 known issue
    ("2.26.10.0", "2.35.30.0", "runtime 2.32 and later need a driver newer than 2.26"),
    # driver 2.29 (AMI v20260714) under the xla track's runtime 2.28: runtime.rst 2.31.0 known issue
    ("2.29.0.0", "2.28.23.0", "host driver 2.29.0.0 needs Neuron runtime 2.33 or later; the image has 2.28.23.0"),
])
def test_documented_driver_runtime_incompatibilities(driver, runtime, expected):
    (problem,) = versions.neuron_driver_runtime_problems(driver, runtime)
    assert expected in problem


def test_the_newest_readable_ami_would_break_the_xla_track(monkeypatch):
    """Why the pin is not v20260714: its driver 2.29.0.0 needs runtime 2.33+, the xla track has 2.28."""
    monkeypatch.setattr(versions, "AL2023_AMI_RELEASE", "v20260714")
    problems = versions.ami_driver_problems()
    assert problems["native"] == [] and "needs Neuron runtime 2.33 or later" in problems["xla"][0]
    monkeypatch.setattr(versions, "AL2023_AMI_RELEASE", "v20260903")  # the earlier pin: no notes read
    assert "has no recorded Neuron driver" in versions.ami_driver_problems()["native"][0]
