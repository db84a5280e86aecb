-- demo.sql - demo tenants and users for the local stack (never a migration).
-- Idempotent: fixed ids, ON CONFLICT DO NOTHING. Run as the owner/superuser.
INSERT INTO tenants (id, code, name, tier, status) VALUES
    ('11111111-1111-4111-8111-111111111111', 'clinic_001', 'Vision Care Clinic', 'pro',        'active'),
    ('22222222-2222-4222-8222-222222222222', 'clinic_002', 'Optical Express',    'enterprise', 'active'),
    ('33333333-3333-4333-8333-333333333333', 'clinic_003', 'Family Eye Center',  'standard',   'active'),
    ('44444444-4444-4444-8444-444444444444', 'clinic_004', 'Closed Optics Ltd',  'pro',        'suspended')
ON CONFLICT DO NOTHING;

INSERT INTO users (id, tenant_id, email, name, role) VALUES
    ('a1111111-0000-4000-8000-000000000001', '11111111-1111-4111-8111-111111111111', 'admin@visioncare.example',     'Ana Admin',      'admin'),
    ('a1111111-0000-4000-8000-000000000002', '11111111-1111-4111-8111-111111111111', 'manager@visioncare.example',   'Mo Manager',     'manager'),
    ('a1111111-0000-4000-8000-000000000003', '11111111-1111-4111-8111-111111111111', 'optician@visioncare.example',  'Oli Optician',   'optician'),
    ('a1111111-0000-4000-8000-000000000004', '11111111-1111-4111-8111-111111111111', 'desk@visioncare.example',      'Rae Reception',  'receptionist'),
    ('a2222222-0000-4000-8000-000000000001', '22222222-2222-4222-8222-222222222222', 'admin@opticalexpress.example', 'Eve Enterprise', 'admin'),
    ('a2222222-0000-4000-8000-000000000002', '22222222-2222-4222-8222-222222222222', 'optician@opticalexpress.example', 'Pat Optician', 'optician'),
    ('a3333333-0000-4000-8000-000000000001', '33333333-3333-4333-8333-333333333333', 'admin@familyeye.example',      'Fay Family',     'admin'),
    ('a3333333-0000-4000-8000-000000000002', '33333333-3333-4333-8333-333333333333', 'desk@familyeye.example',       'Sam Desk',       'receptionist'),
    ('a4444444-0000-4000-8000-000000000001', '44444444-4444-4444-8444-444444444444', 'admin@closedoptics.example',   'Cy Closed',      'admin')
ON CONFLICT DO NOTHING;
