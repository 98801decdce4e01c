SELECT variant, events, users, conversions, converted_users
FROM rollup_experiment WHERE tenant_id = $2 AND experiment_id = $1
ORDER BY variant
