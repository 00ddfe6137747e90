"""Order e-mails leaving the process: templates rendered with jinja2, sent over SMTP or to files."""
