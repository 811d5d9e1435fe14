"""Corpus preparation for Megatron/NeMo pretraining (our replacement for the upstream
`preprocess_data_for_megatron.py --append-eod --dataset-impl=mmap`).

Modules, in the order data flows through them:

    documents     streaming JSONL(.gz) reader for local paths, globs and s3:// prefixes
    tokenization  Rust `tokenizers` batch encoding, equal to one encode(text) per document
    indexed       Megatron indexed-dataset writer (.bin/.idx, temp names then rename)
    pipeline      prepare(cfg): fingerprint + manifest (skip when done), progress lines
    cli           python -m trn_workloads.dataprep

`documents` and `tokenization` are the shared, public pieces (the Ray pretraining workload
builds its fixed-length token blocks from them).
"""
