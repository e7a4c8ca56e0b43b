"""Autoscaling policies compared by the simulator. Each is pure: observations in, decisions out."""
