"""The sending accounts of a deployment: many WhatsApp numbers and Instagram accounts, under one
Meta app or several, each at its own pace (model.py: what they are; the directory: where a
process finds them, kept current while it runs)."""
