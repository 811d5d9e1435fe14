"""Code that runs inside the workload images (compile, serve, data prep, training, finetune).

Every module runs on Trainium/Inferentia through the Neuron SDK in production and on a
plain CPU in tests; the one place that decides which is `trn_workloads.accel`.
"""
