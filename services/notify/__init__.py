"""notify: email and WhatsApp notices to tenant contacts and, on a tenant's behalf, to data subjects."""
