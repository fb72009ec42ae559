"""Test-only support code (gymnasium envs the product does not ship)."""
