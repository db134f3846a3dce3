"""Record formats the roles share: the JSON reader of consumed records and the formats it reads."""
