"""inference-autoscaler: model-based autoscaling of LLM inference services on KServe/Knative."""

__version__ = "0.1.0"
