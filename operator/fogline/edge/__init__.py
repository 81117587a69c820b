"""The EdgeDeployment room's pure code: builders for the per-site DaemonSets that run the
inference server, and the translation between the API's objects and the rollout planner's
observations and plans. No API calls here."""
