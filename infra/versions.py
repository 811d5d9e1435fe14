"""Every chart, image, manifest and AMI version the platform installs, pinned in one place.

Bump deliberately: each entry names its source. Tests assert nothing here floats.
"""
from __future__ import annotations

import json
from pathlib import Path

KARPENTER_CHART = "oci://public.ecr.aws/karpenter/karpenter"
KARPENTER_CRD_CHART = "oci://public.ecr.aws/karpenter/karpenter-crd"
KARPENTER_VERSION = "1.14.1"

# EKS-optimized AL2023 release; Karpenter picks the Neuron variant of this release for
# trn/inf instance types. `@latest` would roll every node whenever AWS publishes an AMI.
# One release serves both Neuron tracks, so its Neuron driver must suit both runtimes
# (neuron_driver_runtime_problems below): v20260625 carries aws-neuronx-dkms 2.28.0.0. The earlier
# pin v20260903 has no release notes readable here (no driver to check), and v20260714, the newest
# readable, carries driver 2.29.0.0, which needs runtime 2.33+ and so fails the xla track's 2.28.
AL2023_AMI_RELEASE = "v20260625"
AL2023_AMI_ALIAS = f"al2023@{AL2023_AMI_RELEASE}"
# aws-neuronx-dkms on the AL2023_x86_64_NEURON AMI of each release (Kubernetes 1.30-1.36 alike):
# awslabs/amazon-eks-ami@81fec2e8 CHANGELOG.md, "AMI Release <release>" package tables.
AL2023_AMI_NEURON_DRIVERS = {
    "v20260610": "2.28.0.0",
    "v20260618": "2.28.0.0",
    "v20260625": "2.28.0.0",
    "v20260714": "2.29.0.0",
}

NEURON_HELM_CHART = "oci://public.ecr.aws/neuron/neuron-helm-chart"
NEURON_HELM_CHART_VERSION = "1.10.0"
NEURON_SCHEDULER_NAME = "my-scheduler"  # the second kube-scheduler the chart runs with the Neuron extender

# The chart's second kube-scheduler defaults to an EKS-D v1.31 image
# (scheduler.customScheduler.image.tag "v1.31.12-eks-1-31-30" in charts/neuron-helm-chart/values.yaml of
# chart 1.9.0, aws-neuron/neuron-helm-charts@b77a6f90; the 1.10.0 package shows the same default in
# `helm show values oci://public.ecr.aws/neuron/neuron-helm-chart --version 1.10.0`), outside the
# Kubernetes version-skew policy on a 1.32+ control plane. One EKS-D kube-scheduler per supported
# minor: aws/eks-distro@17884462, docs/contents/releases/<minor>/<release>/index.md (kube-scheduler row).
EKS_DISTRO_KUBE_SCHEDULER_IMAGE = "public.ecr.aws/eks-distro/kubernetes/kube-scheduler"
EKS_DISTRO_KUBE_SCHEDULER_TAGS = {
    "1.32": "v1.32.13-eks-1-32-41",
    "1.33": "v1.33.13-eks-1-33-31",
    "1.34": "v1.34.9-eks-1-34-21",
}
# The device plugin's node affinity is built from the chart's top-level `neuronInstances` list
# (templates/_helpers.tpl, "neuron-device-plugin.affinity"). The chart's default list already has
# trn2/trn2u/trn3 (values.yaml at aws-neuron/neuron-helm-charts@b77a6f90: trn2.3xlarge,
# trn2.48xlarge, trn2u.48xlarge, trn3.48xlarge, trn3e.24xlarge); we still set it from
# infra/data/instance_types.json plus these, so every type a pool can launch is covered whatever
# the chart default is (trn3p.48xlarge, which only the driver names, comes from the catalog).
NEURON_CHART_INSTANCES = ("trn1.2xlarge", "trn1.32xlarge", "trn1n.32xlarge", "trn2.3xlarge", "trn2.48xlarge",
                          "trn2u.48xlarge", "trn3.48xlarge", "trn3e.24xlarge", "inf2.xlarge", "inf2.8xlarge",
                          "inf2.24xlarge", "inf2.48xlarge")

EFA_CHART_REPO = "https://aws.github.io/eks-charts"
EFA_CHART = "aws-efa-k8s-device-plugin"
# aws/eks-charts@bfe91c4b, stable/aws-efa-k8s-device-plugin/Chart.yaml: chart v0.5.30, appVersion
# (plugin image) v0.5.20. The chart's image.repository is the us-west-2 registry in every region:
# addons.efa_values() points it at the stack region's EKS registry.
EFA_CHART_VERSION = "v0.5.30"
EFA_PLUGIN_IMAGE_TAG = "v0.5.20"
# The chart's supportedInstanceLabels.values (its node affinity) at bfe91c4b lists these Trainium
# types but no trn3 (and no inf2, which has no EFA): addons.efa_values() sets the list to these
# plus every type with EFA interfaces in infra/data/instance_types.json.
EFA_CHART_TRAINIUM_INSTANCES = ("trn1.32xlarge", "trn1n.32xlarge", "trn2-ac.24xlarge", "trn2.3xlarge",
                                "trn2.48xlarge", "trn2u-ac.24xlarge", "trn2u.48xlarge")

# Amazon EKS image registries by region (EKS user guide, "View Amazon container image registries
# for Amazon EKS add-ons", add-ons-images.html): 602401143452 in the original commercial regions,
# other accounts in the opt-in regions listed here. Only regions checked on that page are here.
EKS_REGISTRY_DEFAULT_ACCOUNT = "602401143452"
EKS_REGISTRY_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1",
                        "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "ap-northeast-1",
                        "ap-northeast-2", "ap-northeast-3", "ap-south-1", "ap-southeast-1", "ap-southeast-2",
                        "sa-east-1")
EKS_REGISTRY_OPT_IN_ACCOUNTS = {"af-south-1": "877085696533", "ap-east-1": "800184023465",
                                "ap-southeast-3": "296578399912", "ap-south-2": "900889452093",
                                "ap-southeast-4": "491585149902", "ap-southeast-5": "151610086707",
                                "ap-southeast-7": "121268973566"}


def eks_image_registry(region: str) -> str:
    """The EKS image registry host of a region (where EKS add-on images such as the EFA plugin live)."""
    if region in EKS_REGISTRY_OPT_IN_ACCOUNTS:
        return f"{EKS_REGISTRY_OPT_IN_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws.com"
    if region in EKS_REGISTRY_REGIONS:
        return f"{EKS_REGISTRY_DEFAULT_ACCOUNT}.dkr.ecr.{region}.amazonaws.com"
    known = sorted((*EKS_REGISTRY_REGIONS, *EKS_REGISTRY_OPT_IN_ACCOUNTS))
    raise ValueError(f"no EKS image registry known for region {region!r}; known: {', '.join(known)}")


def kube_scheduler_image_tag(kubernetes_version: str) -> str:
    """The EKS-D kube-scheduler tag matching the cluster's Kubernetes minor version."""
    try:
        return EKS_DISTRO_KUBE_SCHEDULER_TAGS[kubernetes_version]
    except KeyError:
        raise ValueError(f"no kube-scheduler image pinned for Kubernetes {kubernetes_version!r}; pinned: "
                         f"{', '.join(EKS_DISTRO_KUBE_SCHEDULER_TAGS)}") from None

FSX_CSI_CHART_REPO = "https://kubernetes-sigs.github.io/aws-fsx-csi-driver/"
FSX_CSI_CHART = "aws-fsx-csi-driver"
FSX_CSI_CHART_VERSION = "1.13.0"

KUBERAY_CHART_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_CHART = "kuberay-operator"
KUBERAY_VERSION = "1.7.0"

VOLCANO_CHART_REPO = "https://volcano-sh.github.io/helm-charts"
VOLCANO_CHART = "volcano"
VOLCANO_VERSION = "1.15.1"

# KEDA (event-driven autoscaling; llm-serve scales on vLLM's waiting-requests gauge via its
# Prometheus scaler). Chart keda 2.20.2 = app v2.20.2: kedacore/charts keda/Chart.yaml @
# cbb9bb8ce0809dc9048f72302f7c09765d66ed56 ("prepare v2.20.2 release"); kedacore/keda tag v2.20.2
# (68a5b5028f35b22d50597c69819ab32c4e92f21a) is the ScaledObject CRD in infra/schemas/.
KEDA_CHART_REPO = "https://kedacore.github.io/charts"
KEDA_CHART = "keda"
KEDA_VERSION = "2.20.2"

# No chart upstream: our kustomization (infra/manifests/mpi-operator) pins the release
# tag of the manifests and the operator image.
MPI_OPERATOR_VERSION = "v0.8.2"
MPI_OPERATOR_IMAGE = "mpioperator/mpi-operator:0.8.2"

# EKS managed add-ons (pinned builds; `aws eks describe-addon-versions` lists newer ones).
EKS_ADDONS = {
    "vpc-cni": "v1.21.1-eksbuild.1",
    "coredns": "v1.12.4-eksbuild.1",
    "kube-proxy": "v1.34.1-eksbuild.2",
    "eks-pod-identity-agent": "v1.3.10-eksbuild.1",
    "aws-ebs-csi-driver": "v1.53.0-eksbuild.1",
    # Node health conditions (AcceleratedHardwareReady for Neuron/EFA, ...) that Karpenter's
    # node repair acts on; agent source aws/eks-node-monitoring-agent (v1.7.x).
    "eks-node-monitoring-agent": "v1.7.2-eksbuild.1",
}

SUPPORTED_KUBERNETES_VERSIONS = ("1.32", "1.33", "1.34")

_NEURON_PIN_FILE = Path(__file__).resolve().parent.parent / "images" / "neuron-sdk.json"
NEURON_TRACKS = ("xla", "native")


def _neuron_pins() -> dict:
    return json.loads(_NEURON_PIN_FILE.read_text())


def neuron_track(name: str) -> dict:
    """One Neuron software track of images/neuron-sdk.json (SDK, torch, Python, base images,
    the instance families it runs on), with the images' uid."""
    pins = _neuron_pins()
    if name not in pins["tracks"]:
        raise KeyError(f"Neuron track {name!r} is not in {_NEURON_PIN_FILE.name}; allowed values: "
                       f"{', '.join(sorted(pins['tracks']))}")
    return {**pins["tracks"][name], "uid": pins["uid"]}


def neuron_track_for_family(family: str) -> str | None:
    """The track whose images run on an instance family (`trn2`), or None (CPU, unknown)."""
    for name, track in _neuron_pins()["tracks"].items():
        if family in track["families"]:
            return name
    return None


# Neuron DLC repositories Neuron stopped publishing, with the first SDK release that has none:
# pytorch-training-neuronx (PyTorch/XLA training) from 2.31.0, aws-neuron/aws-neuron-sdk@81ce03ae
# about-neuron/announcements/neuron2.x/announce-no-longer-publish-pytorch-training-dlc.rst;
# pytorch-inference-neuronx (NxD Inference) from 2.32.0; both in release-notes/components/containers.rst
# (2.31.0 and 2.32.0 callouts).
UNPUBLISHED_DLC_REPOSITORIES = {
    "public.ecr.aws/neuron/pytorch-training-neuronx": "2.31.0",
    "public.ecr.aws/neuron/pytorch-inference-neuronx": "2.32.0",
}


class UnpinnedBaseImage(ValueError):
    pass


def _sdk_tuple(sdk: str) -> tuple[int, ...]:
    return tuple(int(x) for x in sdk.split("."))


def base_image_problems(track_name: str, track: dict | None = None) -> dict[str, str]:
    """{image kind: why the track's base image cannot be built on} for every kind that cannot:
    not pinned (null, with the track's reason), or a DLC repository Neuron no longer publishes at
    the track's SDK release."""
    track = track or neuron_track(track_name)
    problems = {}
    for kind, image in track["base_images"].items():
        key = f"{_NEURON_PIN_FILE.name} tracks.{track_name}.base_images.{kind}"
        if not image:
            why = [u for u in track.get("unverified", []) if u.startswith(f"base_images.{kind}")]
            # the track's own reason, "base_images.<kind> is not pinned: <why>"
            problems[kind] = f"{key} is not pinned" + (f": {why[0].split(': ', 1)[-1]}" if why else "")
            continue
        repository = image.rsplit(":", 1)[0]
        last = UNPUBLISHED_DLC_REPOSITORIES.get(repository)
        if last and _sdk_tuple(track["neuron_sdk"]) >= _sdk_tuple(last):
            problems[kind] = (f"{key} is {image}: Neuron does not publish {repository} from SDK {last} on "
                              f"(the track pins {track['neuron_sdk']})")
    return problems


def base_image(track_name: str, kind: str) -> str:
    """The base image of one kind (training, inference) of a track, or UnpinnedBaseImage saying why not."""
    problem = base_image_problems(track_name).get(kind)
    if problem:
        raise UnpinnedBaseImage(problem)
    return neuron_track(track_name)["base_images"][kind]


# aws-neuronx-runtime-lib of each Neuron SDK release (the runtime a DLC of that release carries):
# aws-neuron/aws-neuron-sdk@81ce03ae src/helperscripts/n2-manifest.json (neuron_releases[].packages) up
# to 2.32.0; 2.33.0 from https://awsdocs-neuron.readthedocs-hosted.com/en/v2.33.1/release-notes/prev/content.html.
# 2.34.0's list was not readable here: a release not listed gets the runtime of the newest listed
# release before it as a lower bound (every listed release raises the runtime).
NEURON_RUNTIME_BY_SDK = {
    "2.26.1": "2.28.23.0",
    "2.29.0": "2.31.24.0",
    "2.30.0": "2.32.31.0",
    "2.31.0": "2.33.10.0",
    "2.32.0": "2.34.10.0",
    "2.33.0": "2.35.30.0",
}


def neuron_runtime(sdk: str) -> tuple[str, bool]:
    """(runtime library version, exact) of a Neuron SDK release; not exact: a lower bound."""
    if sdk in NEURON_RUNTIME_BY_SDK:
        return NEURON_RUNTIME_BY_SDK[sdk], True
    earlier = [s for s in NEURON_RUNTIME_BY_SDK if _sdk_tuple(s) < _sdk_tuple(sdk)]
    if not earlier:
        raise KeyError(f"no Neuron runtime version known for SDK {sdk} or any release before it "
                       f"(infra/versions.py NEURON_RUNTIME_BY_SDK: {', '.join(NEURON_RUNTIME_BY_SDK)})")
    return NEURON_RUNTIME_BY_SDK[max(earlier, key=_sdk_tuple)], False


def neuron_driver_runtime_problems(driver: str, runtime: str) -> list[str]:
    """Why a host Neuron driver and a container's Neuron runtime library do not work together,
    by the incompatibilities the Neuron release notes document."""
    problems = []
    # Runtime 2.32 (SDK 2.30) and later are not backward compatible with driver 2.26 or earlier:
    # aws-neuron/aws-neuron-sdk@81ce03ae release-notes/components/runtime.rst (Neuron 2.30.0, Known
    # Issues) and release-notes/components/containers.rst (2.30.0: "not backward-compatible with
    # Neuron Driver 2.26 or earlier on the host"). No fix is listed up to 2.32.0.
    if _sdk_tuple(runtime)[:2] >= (2, 32) and _sdk_tuple(driver)[:2] <= (2, 26):
        problems.append(f"Neuron runtime {runtime} does not work with host driver {driver}: runtime 2.32 and later "
                        "need a driver newer than 2.26")
    # Driver 2.29 (SDK 2.31) requires runtime 2.33 or later: same file, Neuron 2.31.0, Neuron Driver,
    # Known Issues. Applied to later drivers as well: no fix is listed up to 2.32.0 (driver 2.30.2).
    if _sdk_tuple(driver)[:2] >= (2, 29) and _sdk_tuple(runtime)[:2] < (2, 33):
        problems.append(f"host driver {driver} needs Neuron runtime 2.33 or later; the image has {runtime} "
                        "(nrt_init fails)")
    return problems


def ami_driver_problems() -> dict[str, list[str]]:
    """{track: problems} of the pinned AMI's Neuron driver against each track's runtime."""
    driver = AL2023_AMI_NEURON_DRIVERS.get(AL2023_AMI_RELEASE)
    out = {}
    for name in NEURON_TRACKS:
        if driver is None:
            out[name] = [f"AMI release {AL2023_AMI_RELEASE} has no recorded Neuron driver (AL2023_AMI_NEURON_DRIVERS)"]
            continue
        runtime, _ = neuron_runtime(neuron_track(name)["neuron_sdk"])
        out[name] = neuron_driver_runtime_problems(driver, runtime)
    return out


def neuron_sdk() -> dict:
    """The xla track's pin (trn1/trn1n/inf2), the one source for the images the existing stacks run."""
    return neuron_track("xla")

# -- monitoring (infra/monitoring/) ---------------------------------------------------------
# prometheus-community/helm-charts charts/kube-prometheus-stack/Chart.yaml @ tag
# kube-prometheus-stack-88.5.3 (commit ea930baeebeba39f56d6b44e351f23b2a072a600): appVersion
# v0.93.1 (the operator; its CRDs are infra/schemas/monitoring.coreos.com_*), Grafana subchart
# 12.11.1 (Grafana 13.2.0, grafana-community/helm-charts), kube-state-metrics 8.4.0 (v2.20.0).
KUBE_PROMETHEUS_STACK_CHART_REPO = "https://prometheus-community.github.io/helm-charts"
KUBE_PROMETHEUS_STACK_CHART = "kube-prometheus-stack"
KUBE_PROMETHEUS_STACK_VERSION = "88.5.3"
PROMETHEUS_OPERATOR_VERSION = "v0.93.1"
# Same repository, tag prometheus-cloudwatch-exporter-0.28.1 (commit
# 2de75c1fd225621846194f7558f585ae9672849a), appVersion 0.16.0: FSx metrics from CloudWatch.
CLOUDWATCH_EXPORTER_CHART = "prometheus-cloudwatch-exporter"
CLOUDWATCH_EXPORTER_VERSION = "0.28.1"

# neuron-monitor container image per Neuron SDK release, as the Neuron docs' DaemonSet pins it:
# aws-neuron/aws-neuron-sdk src/k8/k8s-neuron-monitor-daemonset.yml @ v2.26.1
# (commit 1043931fc6018761f2a6faab70a1b24d00b543d3); unchanged through v2.32.0. A new SDK pin
# without an entry here fails the render, so the monitor is bumped deliberately with the SDK.
NEURON_MONITOR_IMAGES = {
    "2.26.1": "public.ecr.aws/neuron/neuron-monitor:1.3.0",
}


def neuron_monitor_image(sdk_version: str | None = None) -> str:
    sdk = sdk_version or neuron_sdk()["neuron_sdk"]
    if sdk not in NEURON_MONITOR_IMAGES:
        raise KeyError(f"infra/versions.py NEURON_MONITOR_IMAGES has no neuron-monitor image for Neuron SDK {sdk}; "
                       f"known: {', '.join(sorted(NEURON_MONITOR_IMAGES))} (see src/k8/k8s-neuron-monitor-daemonset.yml "
                       "in aws-neuron-sdk at that release)")
    return NEURON_MONITOR_IMAGES[sdk]
