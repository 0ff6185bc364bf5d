"""The monitor: features per account and cluster, linking of accounts, risk scores with reasons, alerts."""
