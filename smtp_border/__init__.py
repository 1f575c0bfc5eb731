"""smtp-border: enforce a campus SMTP border policy with OpenFlow 1.3."""
