"""Compile models for Neuron (torch_neuronx.trace) into `model.pt` + `manifest.json` artifacts.

Entry points:
    python -m trn_workloads.compile ...              (cli.py: trace, save, upload)
    python -m trn_workloads.compile.housing_mlp train ...   (train the California-housing MLP)
"""
