"""The web dashboard: static pages under /dashboard and the live feed they read."""
