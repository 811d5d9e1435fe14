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


def neuron_sdk() -> dict:
    """The images' Neuron SDK pin (images/neuron-sdk.json), the one source for every image."""
    return json.loads(_NEURON_PIN_FILE.read_text())

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
