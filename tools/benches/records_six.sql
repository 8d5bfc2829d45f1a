-- Records on, with issue #18's six columns: for sql_instructions.sh and sql_overhead.
select citas_realtime.set_record_columns(
    array['fecha', 'hora_inicio', 'hora_fin', 'estado', 'cliente_id', 'servicio_id']);
