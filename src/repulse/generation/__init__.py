"""The one generate() used by every command, trainer, attack and evaluation."""
