"""The channel simulators (the WhatsApp and Instagram mocks): development and tests only; no
production module imports this package (an import-linter contract says so)."""
