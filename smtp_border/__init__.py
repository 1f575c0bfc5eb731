"""smtp-border: enforce a campus SMTP border policy with OpenFlow 1.3.

The package root stays import-free: smtp_border_ryu_compat.pth imports
smtp_border.ryu_compat at every interpreter start-up in the virtualenv.
"""
