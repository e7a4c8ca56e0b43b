"""The simulator: vLLM-like replicas on a simulated cluster under each policy, and the comparison
with the baselines. Ours is the controller's own planner (autoscaler.policy) behind an adapter."""
