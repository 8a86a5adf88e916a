"""Shipped design configs (TOML); a package so that they are installed with experiment."""
