"""Corpus preparation for Megatron/NeMo pretraining (our replacement for the upstream
`preprocess_data_for_megatron.py --append-eod --dataset-impl=mmap`).

Modules, in the order data flows through them:

    documents     chunked JSONL(.gz) reader for local paths, globs and s3:// prefixes; damaged
                  gzip / short downloads are errors naming file and byte offset
    tokenization  engines: gigatoken (fast) used only when it gives the Rust `tokenizers`
                  reference's ids on a sample of the run's documents; the reference otherwise
    indexed       Megatron indexed-dataset writer (.bin/.idx, temp names then rename, rollback)
    lock          one run per output prefix (flock on <prefix>.lock)
    progress      documents, tokens, tokens/s, bytes of total, percent, ETA (log lines or a bar)
    pipeline      prepare(cfg): fingerprint + manifest (skip when done), read | encode | write
    cli           python -m trn_workloads.dataprep

`documents` and `tokenization` are the shared, public pieces (the Ray pretraining workload
builds its fixed-length token blocks from them, with the same engine choice).
"""
