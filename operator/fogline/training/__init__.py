"""The ModelTraining room's pure code: builders that turn a typed spec into a Job and its
Service, and the observer that turns a Job and its pods into status. No API calls here."""
