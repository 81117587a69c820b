"""kopf handlers: thin. They read the CR and the children they need (from kopf's indexes,
not fresh lists), call the pure builders and observers, apply what those return and patch
status. No manifest literals live here."""
