"""Safe model rollout: a new version earns its traffic through preflight, shadow and canary, then is
promoted, or rolled back with the reason (model_rollout.controller). The API workers follow the
state file (service_kit.core.rollout_state, read by service_kit.core.rollout); the thresholds are
environment variables (model_rollout.settings)."""
