"""HTTP inference server for a compiled artifact (model.pt + manifest.json) on inf2.

    python -m trn_workloads.serve --model-uri s3://bucket/compiled/housing-mlp/

See app.py for the API and config.py for the TRN_SERVE_* settings.
"""
