"""Pure domain: models, validation and rules. No ``google.*`` imports here."""
