// The live dashboard served at GET /: paste a token, pick a negocio, watch its events and its
// figures. Built on the TypeScript client (clients/typescript, bundled as
// /assets/citas-realtime.js, global `CitasRealtime`). No framework, no build step of its own.
(function () {
  'use strict';
  var CR = window.CitasRealtime;
  var MAX_EVENTS = 200;
  var ESTADOS = ['pendiente', 'confirmada', 'completada', 'cancelada'];
  var STATUS_TEXT = {
    connecting: 'Conectando…',
    open: 'Conectado',
    reconnecting: 'Reconectando…',
    closed: 'Desconectado',
  };

  var $ = function (id) { return document.getElementById(id); };
  var tokenInput = $('token');
  var negocioInput = $('negocio');
  var connectButton = $('connect');
  var disconnectButton = $('disconnect');
  var errorBox = $('error');
  var client = null;
  var subscriptions = [];
  var eventCount = 0;

  function wsUrl() {
    var scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/ws';
  }

  function showError(text) {
    errorBox.textContent = text || '';
    errorBox.hidden = !text;
  }

  function fillNegocios() {
    var list = $('negocios');
    list.textContent = '';
    var negocios = CR.tokenNegocios(tokenInput.value.trim());
    negocios.forEach(function (n) {
      var option = document.createElement('option');
      option.value = n;
      list.appendChild(option);
    });
    if (negocios.length && !negocioInput.value) negocioInput.value = negocios[0];
  }

  function showState(state) {
    var status = $('status');
    status.dataset.status = state.status;
    var text = STATUS_TEXT[state.status] || state.status;
    if (state.status === 'reconnecting') {
      text += ' (intento ' + state.attempt + ')';
    }
    status.textContent = text;
    $('reconnects').textContent = String(state.reconnects);
  }

  function showStats(data) {
    var porEstado = data.por_estado || {};
    var max = 1;
    ESTADOS.forEach(function (e) { max = Math.max(max, porEstado[e] || 0); });
    ESTADOS.forEach(function (e) {
      var bar = document.querySelector('.bar[data-estado="' + e + '"]');
      var count = porEstado[e] || 0;
      bar.dataset.count = String(count);
      bar.querySelector('.count').textContent = String(count);
      bar.querySelector('.fill').style.width = (100 * count / max) + '%';
    });
    $('total').textContent = data.total === undefined ? '–' : String(data.total);
    $('stats-seq').textContent = String(data.seq);
  }

  /** "2026-12-03 10:00" from a record's fecha and hora_inicio, when the DBA chose them. */
  function whenOf(record) {
    if (!record) return '';
    var fecha = typeof record.fecha === 'string' ? record.fecha : '';
    var hora = typeof record.hora_inicio === 'string' ? record.hora_inicio.slice(0, 5) : '';
    return (fecha + ' ' + hora).trim();
  }

  function addEvent(message) {
    var li = document.createElement('li');
    li.dataset.type = message.type;
    var parts = [];
    if (message.data) {
      li.dataset.seq = String(message.data.seq);
      parts = [
        ['type', message.type],
        ['seq', '#' + message.data.seq],
        ['cita', message.data.cita_id || '(sin id)'],
        ['estado', message.data.estado_anterior
          ? message.data.estado_anterior + ' → ' + message.data.estado
          : (message.data.estado || '')],
        ['time', new Date(message.data.timestamp).toLocaleTimeString()],
      ];
      var when = whenOf(message.data.record || message.data.old_record);
      if (when) parts.splice(3, 0, ['when', when]);
    } else {
      parts = [['type', message.type], ['estado', 'recargue los datos']];
    }
    parts.forEach(function (p) {
      var span = document.createElement('span');
      span.className = p[0];
      span.textContent = p[1];
      li.appendChild(span);
    });
    var list = $('events');
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
    eventCount += 1;
    $('event-count').textContent = String(eventCount);
  }

  function disconnect() {
    subscriptions.forEach(function (s) { s.unsubscribe(); });
    subscriptions = [];
    if (client) client.close();
    client = null;
    connectButton.disabled = false;
    disconnectButton.disabled = true;
  }

  function connect() {
    var token = tokenInput.value.trim();
    var negocio = negocioInput.value.trim();
    showError('');
    if (!token) return showError('Falta el token.');
    if (!negocio) return showError('Falta el negocio.');
    disconnect();
    $('events').textContent = '';
    eventCount = 0;
    $('event-count').textContent = '0';
    try { sessionStorage.setItem('citas-realtime-token', token); } catch (e) { /* private mode */ }
    client = new CR.CitasRealtimeClient({ url: wsUrl(), getToken: function () { return tokenInput.value.trim(); } });
    subscriptions.push(client.state$.subscribe(showState));
    var channel = client.channel(negocio);
    subscriptions.push(channel.pipe(CR.filterByType('estadisticas')).subscribe(function (m) { showStats(m.data); }));
    subscriptions.push(channel.subscribe({
      next: function (m) {
        if (m.type === 'estadisticas') return;
        if (m.type === 'error') return showError(m.code + ': ' + m.message);
        addEvent(m);
      },
      error: function (e) { showError((e.code ? e.code + ': ' : '') + e.message); },
    }));
    connectButton.disabled = true;
    disconnectButton.disabled = false;
  }

  tokenInput.addEventListener('input', fillNegocios);
  connectButton.addEventListener('click', connect);
  disconnectButton.addEventListener('click', disconnect);

  // A token in the fragment (never sent to the server, so never in its logs): /#token=...&negocio=...
  var fragment = new URLSearchParams(location.hash.slice(1));
  var saved = null;
  try { saved = sessionStorage.getItem('citas-realtime-token'); } catch (e) { /* private mode */ }
  tokenInput.value = fragment.get('token') || saved || '';
  if (fragment.get('negocio')) negocioInput.value = fragment.get('negocio');
  fillNegocios();
  if (fragment.get('token') && negocioInput.value) connect();
})();
