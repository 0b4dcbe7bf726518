"""Real peers on loopback for the tests: an OpenSSH sshd (sshd.py), later an ADB device emulator."""
