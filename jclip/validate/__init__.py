"""The validation report and the sweep (val.sh)."""
