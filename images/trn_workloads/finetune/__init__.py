"""LoRA finetuning of a causal LM (Llama 3 by default) on text-to-SQL records, evaluated by running SQL.

Entry point: `python -m trn_workloads.finetune --config run.json` (see `cli.py`). Modules in
the order a run uses them: config -> records -> packing -> train (CPU here, `neuron` on
Trainium) -> model_io (merge) -> evaluate + sql_eval -> run (orchestration and outputs).
"""
