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
AL2023_AMI_ALIAS = "al2023@v20260903"

NEURON_HELM_CHART = "oci://public.ecr.aws/neuron/neuron-helm-chart"
NEURON_HELM_CHART_VERSION = "1.10.0"
NEURON_SCHEDULER_NAME = "my-scheduler"  # the second kube-scheduler the chart runs with the Neuron extender

EFA_CHART_REPO = "https://aws.github.io/eks-charts"
EFA_CHART = "aws-efa-k8s-device-plugin"
EFA_CHART_VERSION = "v0.5.14"

FSX_CSI_CHART_REPO = "https://kubernetes-sigs.github.io/aws-fsx-csi-driver/"
FSX_CSI_CHART = "aws-fsx-csi-driver"
FSX_CSI_CHART_VERSION = "1.13.0"

KUBERAY_CHART_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_CHART = "kuberay-operator"
KUBERAY_VERSION = "1.7.0"

VOLCANO_CHART_REPO = "https://volcano-sh.github.io/helm-charts"
VOLCANO_CHART = "volcano"
VOLCANO_VERSION = "1.15.1"

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


def neuron_sdk() -> dict:
    """The xla track's pin (trn1/trn1n/inf2), the one source for the images the existing stacks run."""
    return neuron_track("xla")
