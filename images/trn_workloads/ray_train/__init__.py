"""Llama pretraining with Ray Train on a KubeRay cluster of trn1 nodes (CPU + gloo where no Neuron device exists).

Modules, in the order a run uses them:

    config    PretrainConfig (one flat JSON file), model presets, validation naming the key
    blocks    the token-block format on FSx: packer, atomic writer, memory-mapped reader
    data      python -m trn_workloads.ray_train.data   documents -> fixed-length blocks
    batches   which blocks every data-parallel rank reads at a step (deterministic, resumable)
    model     Llama from a preset; on Neuron with neuronx-distributed tensor-parallel layers
    runtime   the one place that picks Neuron (torch-xla / NxD) or CPU (DDP over gloo) per worker
    loop      the per-worker training loop: resume, train, report metrics and checkpoints
    train     python -m trn_workloads.ray_train.train --config run.json [--precompile]
"""

# The Ray release in the image (images/ray-train/requirements.txt pins it; a test keeps the two
# equal). The RayCluster's spec.rayVersion must name it.
RAY_VERSION = "2.51.1"
