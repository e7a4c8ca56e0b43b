"""I/O: the control loop and its shells (the collector over Prometheus; the actuator over HPAs,
Knative PodAutoscalers and conditions; the decision store; the service that wires them). It
decides with autoscaler.policy."""
