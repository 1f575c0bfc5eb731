"""Ryu applications of smtp-border; run with `ryu-manager ryu_apps.smtp_policy`."""
