"""The parts of chatsite/settings.py that are about one concern each: reading the environment
(`env`), the realtime limits, tiers and breakers (`limits`), and login, HTTPS and browser hardening
(`security`). settings.py star-imports them in order, so Django sees one flat settings module."""
