"""Notifications: CommunicationRequests delivered over SMS, WhatsApp (Twilio) and e-mail (SMTP) as Communications."""
