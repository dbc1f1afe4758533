/*
 * LockWise's broker plugin for Mosquitto 2.0 (plugin interface v5). Its ACL callback runs before acl_file's (plugins
 * register first) and keeps two rules; everything else is deferred to acl_file (its per-lock patterns). It also
 * numbers the broker's run (3).
 *
 * 1. A lock may subscribe to its own command topic and nothing else. Mosquitto's acl_file never refuses a
 *    subscription (security_default.c: "FIXME - implement ACL subscription strings") and checks read rights only
 *    as it delivers each message. Attack run 15: one paired lock subscribed 200,000 shared-subscription groups to
 *    lockwise/+/state (granted, each delivering nothing) in a 7-day session; the broker then checked and refused
 *    each group on every lock's report (85-135 ms of its one thread a message, ~10 messages/s), every app command
 *    expired unsent, and the session outlived the lock's deletion. So:
 *      - a relay identity (plugin_opt_relay_users, comma-separated): deferred to acl_file, which grants it;
 *      - any other client (a lock: its certificate's common name is its username): granted exactly
 *        <topic_root>/<username>/cmd, refused anything else (wildcards, $share groups, other locks' topics).
 *
 * 2. A lock's event is taken only while a relay holds a subscription for it. Mosquitto 2.0 does not persist shared
 *    subscriptions (persist_write.c saves a node's plain subscriptions only): a restarted broker restores each
 *    relay's session without its $share/<group>/lockwise/+/state, and until a relay subscribes again every lock
 *    event got its PUBACK and reached nobody (attack run 16: 3 and 48 state reports lost). The same happens while
 *    every relay has left its group (a relay that stops cleanly unsubscribes first). So the plugin follows each
 *    connected relay's subscriptions to the relayed topic filters (plugin_opt_relayed_topics, comma-separated),
 *    through their SUBSCRIBE and UNSUBSCRIBE checks ($share group and all; at most MAX_HELD a relay, any more
 *    refused), and forgets them all when the relay's connection ends: its session may end then or later, unseen
 *    (an expiry, a takeover with a clean start; attack run 17), and a relay subscribes again on every connect.
 *    While no connected relay holds a subscription for a lock's publish to its own topic, the publish's check
 *    answers MOSQ_ERR_ADMINISTRATIVE_ACTION: Mosquitto then closes the lock's connection without a PUBACK
 *    (handle_publish.c), and the lock, which keeps a persistent session at QoS 1, sends the event again when it
 *    reconnects. Its last will, checked as the connection closes, goes as it would without the plugin (nothing
 *    would send it again: attack run 17, review). A relay's subscriptions are its identity's (its username, also
 *    its client id: use_username_as_clientid). Retained messages' source checks (check_retain_source: a client of
 *    no protocol) are deferred. Each close costs the broker a TLS handshake when the lock returns (about 1.5 ms of
 *    its one thread, attack run 17): locks back off.
 *
 * 3. A broker run's number: its start, in microseconds since 1970 on the broker's clock. Mosquitto 2.0 keeps no last
 *    will across a crash, so the relays' upkeep turns offline the locks not back since the broker started
 *    (mqtt_relay/broker_start.py). Dated from $SYS/broker/uptime, the start is known to within seconds, and a lock
 *    that connected in the seconds before a second crash stayed online (attack run 18). So the plugin tags every
 *    message it takes from a client that is not a relay with the run's number (RUN_PROPERTY, an MQTT 5 user
 *    property, kept with the message in persistence: one delivered after a restart carries the run it was
 *    published in), in place of the message's own properties (a lock that named a newer run would stay online),
 *    and publishes the number on RUN_TOPIC (retained, once the broker runs: a $SYS message is never persisted, so
 *    no older run's is restored over it). A lock heard from on an earlier run is not connected. A last will is
 *    sent without the message callback and keeps the properties its lock gave it: the relay and the devices
 *    function take no run that is ahead of the broker's. plugin_opt_run_file keeps the last run's number.
 *
 * 4. A lock's last will, delayed or not, is taken only as its goodbye, "offline[ <n>]" on its own status topic
 *    (goodbye()). The will Mosquitto sends as a new connection of the lock takes its session over is checked as a
 *    publish of a connection still whole, and cannot be told from one then: what it keeps past on_message's rule
 *    (a state, an ack, a long presence) is cleared as that connection ends (on_disconnect; attack run 129).
 *
 * 5. A lock publishes at most plugin_opt_lock_messages_per_second on average, in bursts of at most
 *    plugin_opt_lock_message_burst (a token bucket per username, kept across its connections). Past it the
 *    publish's check answers MOSQ_ERR_ADMINISTRATIVE_ACTION: the connection is closed without a PUBACK, and the
 *    lock sends the message again when it returns. Its last will counts as a message and may borrow one, so the will
 *    of a connection the pace closed still goes; past that it is dropped (a lock connecting in a loop with a new will
 *    each time sent 233 a second: attack run 45). Every lock's
 *    events wait in one
 *    queue in the broker, the relays' shared-subscription sessions: one lock publishing 120,000 small reports in
 *    10 s put every other lock's events 10 s behind them, and past max_queued_messages Mosquitto dropped other
 *    locks' messages it had acknowledged (attack run 44). A lock reports a few times an hour; Mosquitto 2.0 has no
 *    per-client inbound limit, and MQTT 3.1.1 publishers no flow control. A relay is not counted. Both options
 *    are required together, finite, the burst at least 1 (the plugin refuses to start otherwise).
 *
 * 6. A lock keeps a keepalive of at most plugin_opt_lock_max_keepalive seconds, never none (0): a lock asking 0 or
 *    65535 that lost its power silently stayed connected and online, its last will unsent, for good or 27 hours
 *    (attack run 131). The broker's max_keepalive tells an MQTT 5 client the most as its Server Keep Alive (its
 *    keepalive is that one before any check), but Mosquitto 2.0.11 takes an MQTT 3.1.1 client's as asked (2.0.12
 *    refuses it at the CONNACK): such a lock's first subscription or publish answers MOSQ_ERR_ADMINISTRATIVE_ACTION,
 *    and its connection is closed unacknowledged. Its last will still goes. Optional (0 or absent: unchecked).
 *
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -o lockwise_acl.so lockwise_acl.c (Debian: gcc, libc6-dev,
 * mosquitto-dev, libmosquitto-dev).
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define MAX_RELAYED 8 /* relayed topic filters */
#define MAX_HELD 16   /* a relay's subscriptions to them ($share groups count apart) */
/* where the run's number is published (mqtt_relay.broker_start.RUN_TOPIC, infra.broker.render.RUN_TOPIC) */
#define RUN_TOPIC "$SYS/broker/lockwise/run"
/* the user property each taken message carries it in (mqtt_relay.broker_start.RUN_PROPERTY) */
#define RUN_PROPERTY "lockwise-run"
/* the longest presence a lock's status topic keeps: "offline <n>", n at most 15 digits, is 23 bytes. A longer one goes
 * on, not retained: each identity a lock was ever paired with kept up to 64 KB in memory and in the persistence file
 * for good, nothing clearing a replaced identity's (attack run 102: 50 pairings a day, 3.2 MB a day an owner) */
#define STATUS_KEPT_MAX 32

struct relay {
	char *name;
	char *held[MAX_HELD];
};

/* 5: a lock's publishing allowance, by username (its certificate's identity) */
struct pace {
	char *username;
	double tokens;
	double at; /* monotonic seconds of the last refill */
	struct pace *next;
};

#define PACE_BUCKETS 65536
/* buckets looked through for idle allowances at each tick: every one about once a minute at Mosquitto's ~100 ms */
#define PACE_SWEEP 128

struct lockwise_acl {
	mosquitto_plugin_id_t *id;
	char *root; /* the topic root, "lockwise" */
	struct relay *relays;
	int relay_count;
	char *relayed[MAX_RELAYED];
	int relayed_count;
	int cover[MAX_RELAYED]; /* how many relays' subscriptions hold each relayed filter */
	/* the client whose connection is ending: Mosquitto checks its last will next, if it has one (context.c:
	 * context__disconnect calls the plugins, then context__send_will, in the same call); any check consumes it,
	 * and so does the tick that ends the loop's pass (on_tick): a connection ending without a will (a clean
	 * DISCONNECT drops it) left it set, and once its client was freed (the next pass's context__free_disused) a new
	 * lock's client at the same address had its first message taken for that will and refused (attack run 127) */
	const struct mosquitto *closing;
	/* the lock whose publish its check let through to be kept retained where on_message keeps nothing (a state, an
	 * ack, a presence past STATUS_KEPT_MAX), and that topic, until its message callback comes. One that never came
	 * and ends with the client's connection (on_disconnect) was that connection's last will, sent as another took
	 * its session over (handle_connect.c: context__send_will before do_disconnect, the connection still whole, so
	 * neither closing nor connection_ended tells it): what it kept is cleared (attack run 129) */
	const struct mosquitto *unheard;
	char *unheard_topic;
	char run[24];       /* this run's number, in decimal */
	bool run_published; /* on RUN_TOPIC, at the first tick */
	double rate;        /* 5: a lock's messages a second, on average (0: no limit) */
	double burst;       /* and at most at once */
	int max_keepalive;   /* 6: a lock's longest keepalive (0: unchecked) */
	struct pace **paces; /* PACE_BUCKETS chains */
	unsigned sweep;      /* the next bucket the tick looks through */
};

/* One line a second at most for each kind: a client sending refused packets without end would otherwise have one
 * written for each. */
struct quiet {
	time_t last;
	unsigned long more;
};

static bool speak(struct quiet *q, unsigned long *more)
{
	time_t now = time(NULL);

	if(now == q->last){
		q->more++;
		return false;
	}
	*more = q->more;
	q->last = now;
	q->more = 0;
	return true;
}

static struct relay *relay_named(const struct lockwise_acl *acl, const char *username)
{
	for(int i = 0; i < acl->relay_count; i++){
		if(strcmp(acl->relays[i].name, username) == 0){
			return &acl->relays[i];
		}
	}
	return NULL;
}

/* Whether topic is <root>/<username>/<leaf> (any leaf when leaf is NULL). A username with a wildcard or a
 * separator in it owns nothing. */
static bool owns(const struct lockwise_acl *acl, const char *username, const char *topic, const char *leaf)
{
	size_t root_len = strlen(acl->root), user_len = strlen(username);
	const char *rest;

	if(user_len == 0 || strpbrk(username, "+#/") != NULL){
		return false;
	}
	if(strncmp(topic, acl->root, root_len) != 0 || topic[root_len] != '/'
			|| strncmp(topic + root_len + 1, username, user_len) != 0 || topic[root_len + 1 + user_len] != '/'){
		return false;
	}
	rest = topic + root_len + 2 + user_len;
	return leaf == NULL ? strchr(rest, '/') == NULL : strcmp(rest, leaf) == 0;
}

/* The filter a subscription is to: $share/<group>/<filter>, or the subscription itself. */
static const char *filter_of(const char *sub)
{
	const char *slash;

	if(strncmp(sub, "$share/", 7) != 0){
		return sub;
	}
	slash = strchr(sub + 7, '/');
	return slash == NULL ? "" : slash + 1;
}

static int relayed_index(const struct lockwise_acl *acl, const char *sub)
{
	const char *filter = filter_of(sub);

	for(int i = 0; i < acl->relayed_count; i++){
		if(strcmp(acl->relayed[i], filter) == 0){
			return i;
		}
	}
	return -1;
}

static void covered(struct lockwise_acl *acl, int index, int change)
{
	acl->cover[index] += change;
	if(acl->cover[index] == 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: no relay holds %s: holding locks' events to it",
				acl->relayed[index]);
	}else if(acl->cover[index] == 1 && change > 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: a relay holds %s: taking locks' events to it",
				acl->relayed[index]);
	}
}

/* False when the plugin cannot follow the subscription (MAX_HELD already): it is then refused, so that what the
 * plugin counts never parts from what the broker holds. */
static bool relay_subscribes(struct lockwise_acl *acl, struct relay *relay, const char *sub)
{
	int index = relayed_index(acl, sub), free_slot = -1;

	if(index < 0){
		return true;
	}
	for(int i = 0; i < MAX_HELD; i++){
		if(relay->held[i] == NULL){
			free_slot = free_slot < 0 ? i : free_slot;
		}else if(strcmp(relay->held[i], sub) == 0){
			return true; /* subscribed again: already counted */
		}
	}
	if(free_slot < 0 || (relay->held[free_slot] = strdup(sub)) == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: refused %s's subscription to %s (%d followed at most)",
				relay->name, sub, MAX_HELD);
		return false;
	}
	covered(acl, index, 1);
	return true;
}

static void relay_drops(struct lockwise_acl *acl, struct relay *relay, const char *sub)
{
	for(int i = 0; i < MAX_HELD; i++){
		if(relay->held[i] != NULL && (sub == NULL || strcmp(relay->held[i], sub) == 0)){
			covered(acl, relayed_index(acl, relay->held[i]), -1);
			free(relay->held[i]);
			relay->held[i] = NULL;
		}
	}
}

/* Whether a lock's last will is its goodbye: "offline" or "offline <n>" (at most 15 digits) on its own status topic.
 * A will saying anything else is refused: one saying "online" showed a lock that had lost its power online for good,
 * and a will keeps the properties its lock set (it is sent without MOSQ_EVT_MESSAGE), a broker run among them
 * (attack run 19). A delayed will (MQTT 5 Will Delay Interval) is checked later, from the broker's loop, by a client
 * whose connection has ended (connection_ended): judged the same (attack run 127). */
static bool goodbye(const struct lockwise_acl *acl, const char *username, const char *topic, const void *payload,
		uint32_t len)
{
	const char *text = payload;

	if(!owns(acl, username, topic, "status") || len < 7 || memcmp(text, "offline", 7) != 0){
		return false;
	}
	if(len == 7){
		return true;
	}
	if(text[7] != ' ' || len == 8 || len > 8 + 15){
		return false;
	}
	for(uint32_t i = 8; i < len; i++){
		if(text[i] < '0' || text[i] > '9'){
			return false;
		}
	}
	return true;
}

/* OpenSSL's, in the broker's process (mosquitto_client_certificate's copies are freed with it); declared here so that
 * the plugin builds without OpenSSL's headers */
void X509_free(void *cert);

/* Whether a client's connection has ended: its TLS session is gone (net__socket_close frees it), so it has no
 * certificate to show. Every lock connects with one (require_certificate); a lock's publish checked without one is its
 * last will sent after its connection ended, a delayed one (MQTT 5 Will Delay Interval), which Mosquitto checks from
 * its loop long after the disconnect. A retained message's source check (protocol 0) is no will. */
static bool connection_ended(const struct mosquitto *client)
{
	void *cert;

	if(mosquitto_client_protocol_version(client) == 0){
		return false;
	}
	cert = mosquitto_client_certificate(client);
	if(cert == NULL){
		return true;
	}
	X509_free(cert);
	return false;
}

/* 6: whether a lock's connection keeps a keepalive the broker enforces, of at most acl->max_keepalive */
static bool keeps_alive(const struct lockwise_acl *acl, const struct mosquitto *client)
{
	int keepalive;

	if(acl->max_keepalive == 0){
		return true;
	}
	keepalive = mosquitto_client_keepalive(client);
	return keepalive > 0 && keepalive <= acl->max_keepalive;
}

static double monotonic_s(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static unsigned pace_bucket(const char *username)
{
	uint32_t hash = 2166136261u; /* FNV-1a */

	for(const unsigned char *c = (const unsigned char *)username; *c; c++){
		hash = (hash ^ *c) * 16777619u;
	}
	return hash % PACE_BUCKETS;
}

/* 5: whether the lock may publish one more message now (taking it from its allowance); a will (``borrow``) may take
 * one it does not have yet, the allowance going below 0, so that the will of a connection the pace closed still goes
 * (it is a lock's only goodbye) while a lock connecting in a loop, a will each time, still sends one a refill's worth
 * of time. Without memory for a new allowance, it may: the limit protects the queue, not the lock. */
static bool within_pace(struct lockwise_acl *acl, const char *username, bool borrow)
{
	struct pace **chain, *p;
	double now;

	if(acl->rate <= 0 || acl->paces == NULL){
		return true;
	}
	now = monotonic_s();
	chain = &acl->paces[pace_bucket(username)];
	for(p = *chain; p != NULL && strcmp(p->username, username) != 0; p = p->next){
	}
	if(p == NULL){
		p = calloc(1, sizeof(*p));
		if(p == NULL || (p->username = strdup(username)) == NULL){
			free(p);
			return true;
		}
		p->tokens = acl->burst;
		p->at = now;
		p->next = *chain;
		*chain = p;
	}
	p->tokens += (now - p->at) * acl->rate;
	if(p->tokens > acl->burst){
		p->tokens = acl->burst;
	}
	p->at = now;
	if(p->tokens < (borrow ? 0 : 1)){
		return false;
	}
	p->tokens -= 1;
	return true;
}

/* 5: forget the allowances full again (idle for burst / rate seconds), a few buckets a tick */
static void sweep_paces(struct lockwise_acl *acl)
{
	double now;

	if(acl->paces == NULL){
		return;
	}
	now = monotonic_s();
	for(int i = 0; i < PACE_SWEEP; i++){
		struct pace **link = &acl->paces[acl->sweep];

		while(*link != NULL){
			struct pace *p = *link;

			if(p->tokens + (now - p->at) * acl->rate >= acl->burst){
				*link = p->next;
				free(p->username);
				free(p);
			}else{
				link = &p->next;
			}
		}
		acl->sweep = (acl->sweep + 1) % PACE_BUCKETS;
	}
}

/* A lock's publish to one of its own relayed topics while no relay holds a subscription for it. */
static bool nobody_relays(const struct lockwise_acl *acl, const char *username, const char *topic)
{
	bool match;

	if(!owns(acl, username, topic, NULL)){
		return false; /* not its topic: acl_file refuses it */
	}
	for(int i = 0; i < acl->relayed_count; i++){
		if(acl->cover[i] == 0 && mosquitto_topic_matches_sub(acl->relayed[i], topic, &match) == MOSQ_ERR_SUCCESS
				&& match){
			return true;
		}
	}
	return false;
}

/* Whether a lock's message, retained, would keep what on_message keeps nothing of: a state, an ack, or a presence
 * past STATUS_KEPT_MAX, on one of its own topics. */
static bool kept_past_the_rule(const struct lockwise_acl *acl, const char *username, const char *topic, bool retain,
		uint32_t len)
{
	return retain && len > 0 && owns(acl, username, topic, NULL)
		&& (len > STATUS_KEPT_MAX || !owns(acl, username, topic, "status"));
}

/* Nothing awaited any more (await_message): its message came, its connection ended, or the loop's pass did. */
static void forget_unheard(struct lockwise_acl *acl)
{
	free(acl->unheard_topic);
	acl->unheard_topic = NULL;
	acl->unheard = NULL;
}

/* A lock's publish its check lets through: awaited by on_message (unheard) when it would keep what the rule keeps
 * nothing of; any other publish check replaces what was awaited. */
static void await_message(struct lockwise_acl *acl, const struct mosquitto *client, const char *username,
		const char *topic, bool retain, uint32_t len)
{
	forget_unheard(acl);
	if(kept_past_the_rule(acl, username, topic, retain, len)){
		acl->unheard_topic = strdup(topic);
		acl->unheard = acl->unheard_topic == NULL ? NULL : client;
	}
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	static struct quiet refused, held, wills, paced, unkept;
	const struct mosquitto_evt_acl_check *ed = event_data;
	struct lockwise_acl *acl = userdata;
	struct relay *relay;
	const char *username = mosquitto_client_username(ed->client);
	unsigned long more;
	bool its_will = ed->client == acl->closing;
	(void)event;

	acl->closing = NULL;
	if(username == NULL){
		return ed->access == MOSQ_ACL_SUBSCRIBE ? MOSQ_ERR_ACL_DENIED : MOSQ_ERR_PLUGIN_DEFER;
	}
	relay = relay_named(acl, username);
	if(relay != NULL){
		if(ed->access == MOSQ_ACL_SUBSCRIBE && !relay_subscribes(acl, relay, ed->topic)){
			return MOSQ_ERR_ACL_DENIED;
		}else if(ed->access == MOSQ_ACL_UNSUBSCRIBE){
			relay_drops(acl, relay, ed->topic);
		}
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	/* 6: a lock connected without a keepalive the broker enforces is closed at its first subscription or publish
	 * (not its last will, nor a retained message's source check: protocol 0) */
	if((ed->access == MOSQ_ACL_SUBSCRIBE || ed->access == MOSQ_ACL_WRITE) && !its_will
			&& mosquitto_client_protocol_version(ed->client) != 0 && !keeps_alive(acl, ed->client)
			&& !connection_ended(ed->client)){
		if(speak(&unkept, &more)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: %.64s connected with a keepalive of %d s (none is 0,"
					" at most %d): closing its connection (and %lu more since)", username,
					mosquitto_client_keepalive(ed->client), acl->max_keepalive, more);
		}
		return MOSQ_ERR_ADMINISTRATIVE_ACTION;
	}
	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE:
			if(owns(acl, username, ed->topic, "cmd")){
				return MOSQ_ERR_SUCCESS;
			}
			if(speak(&refused, &more)){
				mosquitto_log_printf(MOSQ_LOG_NOTICE,
						"lockwise_acl: refused %.64s's subscription to %.128s (and %lu more since)",
						username, ed->topic, more);
			}
			return MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_WRITE:
			/* its will as its connection ends, or a delayed one (connection_ended), is taken only as its goodbye.
			 * Checked as a publish, a delayed will kept a state, an ack or a presence of up to 64 KB retained for each
			 * identity a lock was ever paired with, past on_message's STATUS_KEPT_MAX and its dropped retained flags,
			 * and said online for a lock gone (attack run 127; attack runs 19, 79 and 102 left it) */
			its_will = its_will || connection_ended(ed->client);
			if(its_will && !goodbye(acl, username, ed->topic, ed->payload, ed->payloadlen)){
				if(speak(&wills, &more)){
					mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: refused %.64s's last will to %.128s: a"
							" lock's will is its offline on its status topic (and %lu more since)", username, ed->topic,
							more);
				}
				return MOSQ_ERR_ACL_DENIED;
			}
			/* a will counts too, borrowing one message's allowance; past that it is dropped (the lock's next online
			 * says where it is). Not counted, a lock connecting in a loop with a new will each time sent 233 a second
			 * past a pace of 20 (attack run 45) */
			if(its_will && !within_pace(acl, username, true)){
				if(speak(&wills, &more)){
					mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: dropped %.64s's last will: it publishes"
							" faster than %g messages a second (and %lu more since)", username, acl->rate, more);
				}
				return MOSQ_ERR_ACL_DENIED;
			}
			/* QoS 1 at most: a QoS 2 message is held from its PUBLISH to its PUBREL, and a lock that never sent one
			 * pinned ~23 MB a session for the sessions' 7 days (attack run 78). The listener's max_qos says so too,
			 * but Mosquitto 2.0.11 forgets it when it reloads its configuration (the CRL's refresh): checked here */
			if(!its_will && ed->qos > 1){
				if(speak(&paced, &more)){
					mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: %.64s published at QoS 2: closing its"
							" connection (and %lu more since)", username, more);
				}
				return MOSQ_ERR_ADMINISTRATIVE_ACTION;
			}
			/* protocol 0: no connection, the source of a retained message being checked; a last will within its
			 * pace: nothing would ever send it again (it is not held for a relay: it goes to the relays' sessions,
			 * if they hold any) */
			if(!its_will && mosquitto_client_protocol_version(ed->client) != 0 && !within_pace(acl, username, false)){
				if(speak(&paced, &more)){
					mosquitto_log_printf(MOSQ_LOG_NOTICE,
							"lockwise_acl: %.64s publishes faster than %g messages a second (%g at once):"
							" closing its connection unacknowledged (and %lu more since)",
							username, acl->rate, acl->burst, more);
				}
				return MOSQ_ERR_ADMINISTRATIVE_ACTION;
			}
			if(!its_will && mosquitto_client_protocol_version(ed->client) != 0
					&& nobody_relays(acl, username, ed->topic)){
				if(speak(&held, &more)){
					mosquitto_log_printf(MOSQ_LOG_NOTICE,
							"lockwise_acl: holding %.64s's message to %.128s until a relay subscribes:"
							" closing its connection unacknowledged (and %lu more since)",
							username, ed->topic, more);
				}
				return MOSQ_ERR_ADMINISTRATIVE_ACTION;
			}
			if(!its_will && mosquitto_client_protocol_version(ed->client) != 0){
				await_message(acl, ed->client, username, ed->topic, ed->retain, ed->payloadlen);
			}
			return MOSQ_ERR_PLUGIN_DEFER;
		default:
			return MOSQ_ERR_PLUGIN_DEFER;
	}
}

/* 3: a message from a client that is not a relay carries the run and nothing else. Its own properties are dropped:
 * nothing reads them, a tag of its own would name another run, and reading them takes functions Mosquitto's own
 * builds do not export to plugins (src/linker.syms: only mosquitto_property_add_* and _free_all). */
static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct lockwise_acl *acl = userdata;
	const char *username = mosquitto_client_username(ed->client);
	(void)event;

	if(ed->client == acl->unheard){
		forget_unheard(acl);
	}
	if(username != NULL && relay_named(acl, username) != NULL){
		return MOSQ_ERR_SUCCESS; /* a relay's command: nobody reads a run from it */
	}
	/* a lock retains its presence (its status topic) and nothing else: a retained state or ack was handed to every
	 * relay session again as it subscribed, on every reconnect, up to 2 x 64 KB per lock (attack run 78). The
	 * message itself goes on, not retained. An empty one stays retained: it deletes what the topic kept (one kept
	 * before this, or by a delayed last will, which Mosquitto 2.0 sends past this callback: attack run 79); a presence
	 * longer than any "online <n>" goes on, not retained (STATUS_KEPT_MAX) */
	if(username != NULL && ed->retain && ed->payloadlen > 0
			&& (ed->payloadlen > STATUS_KEPT_MAX || !owns(acl, username, ed->topic, "status"))){
		ed->retain = false;
	}
	mosquitto_property_free_all(&ed->properties);
	return mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, RUN_PROPERTY, acl->run);
}

/* 3: this run's number: the time in microseconds, or one more than the last run's (kept in run_file) when the clock
 * is behind it by less than a day (a host that stepped its clock back between two starts), so that runs only grow.
 * A last run further ahead, or past what a bigint holds, is not taken (an edited or damaged file would otherwise
 * number every later run out of the devices function's reach: attack run 19). Written to a new file, then renamed:
 * a crash while writing leaves the last one whole. */
static unsigned long long next_run(const char *run_file)
{
	const unsigned long long day = 86400ULL * 1000000ULL, most = 9223372036854775806ULL; /* 2^63 - 2 */
	struct timespec now;
	unsigned long long run, last = 0;
	char text[32] = "", *end = NULL, temp[4096];
	FILE *f;
	bool kept;

	clock_gettime(CLOCK_REALTIME, &now);
	run = (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000ULL;
	if(run_file == NULL){
		return run;
	}
	f = fopen(run_file, "r");
	if(f != NULL){
		if(fgets(text, sizeof(text), f) != NULL && text[0] >= '0' && text[0] <= '9'){
			last = strtoull(text, &end, 10);
			if(end == text || (*end != '\n' && *end != '\0') || last > most){
				last = 0;
			}
		}
		fclose(f);
	}
	if(last >= run && last - run < day){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: the clock is behind the last run (%llu): numbering"
				" this one after it", last);
		run = last + 1;
	}else if(last >= run){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: the last run in %s (%llu) is a day or more ahead of the"
				" clock: not taken", run_file, last);
	}
	kept = snprintf(temp, sizeof(temp), "%s.new", run_file) < (int)sizeof(temp);
	f = kept ? fopen(temp, "w") : NULL;
	kept = f != NULL && fprintf(f, "%llu\n", run) > 0;
	if(f != NULL && (fflush(f) != 0 || fsync(fileno(f)) != 0)){
		kept = false;
	}
	if(f != NULL && fclose(f) != 0){
		kept = false;
	}
	if(!kept || rename(temp, run_file) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: cannot keep the run in %s: a clock stepped back"
				" before the next start would number it lower", run_file);
	}
	return run;
}

/* 3: the run's number on RUN_TOPIC, once: at the first tick, after the persisted state was restored. */
static int on_tick(int event, void *event_data, void *userdata)
{
	struct lockwise_acl *acl = userdata;
	(void)event;
	(void)event_data;

	/* a last will is checked within the disconnect that set closing, before this tick; a client is freed only at
	 * the next pass's start, after it, so closing never names a freed client's address taken by another */
	acl->closing = NULL;
	forget_unheard(acl); /* its message callback or its connection's end came in the same pass, or neither */
	sweep_paces(acl);
	if(!acl->run_published && mosquitto_broker_publish_copy(NULL, RUN_TOPIC, (int)strlen(acl->run), acl->run, 0,
				true, NULL) == MOSQ_ERR_SUCCESS){
		acl->run_published = true;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: broker run %s", acl->run);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_disconnect *ed = event_data;
	struct lockwise_acl *acl = userdata;
	const char *username = mosquitto_client_username(ed->client);
	struct relay *relay = username == NULL ? NULL : relay_named(acl, username);
	(void)event;

	/* a relay's subscriptions count while it is connected: its session may end with the connection (a clean one),
	 * at an expiry the plugin interface does not tell, or be taken over with a clean start; a relay subscribes
	 * again every time it connects */
	if(relay != NULL){
		relay_drops(acl, relay, NULL);
	}else{
		acl->closing = ed->client;
	}
	/* a publish let through with no message callback after it, then its connection's end: the last will sent as
	 * another connection took the session over (a lock connecting again with its identity), past on_message and
	 * the will's check (4) alike; what it kept is cleared, as a lock's own empty retained message clears it. Without
	 * it, a lock kept a state of up to max_packet_size retained under each identity it was ever paired with, handed to
	 * every relay's session as it subscribed again: run 78's rule, and run 127's for a delayed will, undone by
	 * reconnecting (attack run 129) */
	if(ed->client == acl->unheard && acl->unheard_topic != NULL){
		static struct quiet cleared;
		unsigned long more;

		if(speak(&cleared, &more)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: cleared what %.64s's last will kept on %.128s as"
					" its session was taken over: a lock's will is its offline on its status topic (and %lu more"
					" since)", username == NULL ? "?" : username, acl->unheard_topic, more);
		}
		mosquitto_broker_publish_copy(NULL, acl->unheard_topic, 0, NULL, 0, true, NULL);
	}
	if(ed->client == acl->unheard){
		forget_unheard(acl);
	}
	return MOSQ_ERR_SUCCESS;
}

/* Whether text is a whole finite number above 0 (into out). */
static bool positive(const char *text, double *out)
{
	char *end = NULL;
	double value = strtod(text, &end);

	if(end == text || *end != '\0' || !isfinite(value) || value <= 0){
		return false;
	}
	*out = value;
	return true;
}

/* Splits a comma-separated list into out (at most max items, empty ones skipped); the count, or -1. */
static int split(const char *list, char **out, int max)
{
	char *copy = strdup(list), *save = NULL, *item;
	int count = 0;

	if(copy == NULL){
		return -1;
	}
	for(item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)){
		if(count == max || (out[count] = strdup(item)) == NULL){
			while(count > 0){
				free(out[--count]);
				out[count] = NULL;
			}
			count = -1;
			break;
		}
		count++;
	}
	free(copy);
	return count;
}

static void acl_free(struct lockwise_acl *acl)
{
	if(acl == NULL){
		return;
	}
	for(int i = 0; i < acl->relay_count; i++){
		free(acl->relays[i].name);
		for(int j = 0; j < MAX_HELD; j++){
			free(acl->relays[i].held[j]);
		}
	}
	for(int i = 0; i < acl->relayed_count; i++){
		free(acl->relayed[i]);
	}
	free(acl->unheard_topic);
	for(int i = 0; acl->paces != NULL && i < PACE_BUCKETS; i++){
		while(acl->paces[i] != NULL){
			struct pace *p = acl->paces[i];

			acl->paces[i] = p->next;
			free(p->username);
			free(p);
		}
	}
	free(acl->paces);
	free(acl->relays);
	free(acl->root);
	free(acl);
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
		int option_count)
{
	struct lockwise_acl *acl = calloc(1, sizeof(*acl));
	const char *root = "lockwise", *relays = "", *relayed = "", *run_file = NULL, *rate = NULL, *burst = NULL;
	const char *max_keepalive = NULL;
	double keepalive = 0;
	char **names = NULL;
	int count;

	if(acl == NULL){
		return MOSQ_ERR_NOMEM;
	}
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "topic_root") == 0){
			root = options[i].value;
		}else if(strcmp(options[i].key, "relay_users") == 0){
			relays = options[i].value;
		}else if(strcmp(options[i].key, "relayed_topics") == 0){
			relayed = options[i].value;
		}else if(strcmp(options[i].key, "run_file") == 0){
			run_file = options[i].value;
		}else if(strcmp(options[i].key, "lock_messages_per_second") == 0){
			rate = options[i].value;
		}else if(strcmp(options[i].key, "lock_message_burst") == 0){
			burst = options[i].value;
		}else if(strcmp(options[i].key, "lock_max_keepalive") == 0){
			max_keepalive = options[i].value;
		}
	}
	if(max_keepalive != NULL && (!positive(max_keepalive, &keepalive) || keepalive > 65535
				|| keepalive != (double)(int)keepalive)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "lockwise_acl: plugin_opt_lock_max_keepalive is a whole number of"
				" seconds, 1 to 65535");
		acl_free(acl);
		return MOSQ_ERR_INVAL;
	}
	acl->max_keepalive = (int)keepalive;
	if((rate == NULL) != (burst == NULL) || (rate != NULL && (!positive(rate, &acl->rate)
					|| !positive(burst, &acl->burst) || acl->burst < 1))){
		mosquitto_log_printf(MOSQ_LOG_ERR, "lockwise_acl: plugin_opt_lock_messages_per_second and"
				" plugin_opt_lock_message_burst go together, each a positive number, the burst at least 1");
		acl_free(acl);
		return MOSQ_ERR_INVAL;
	}
	if(acl->rate > 0){
		acl->paces = calloc(PACE_BUCKETS, sizeof(*acl->paces));
		if(acl->paces == NULL){
			acl_free(acl);
			return MOSQ_ERR_NOMEM;
		}
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: a lock publishes at most %g messages a second (%g at"
				" once)", acl->rate, acl->burst);
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: no plugin_opt_lock_messages_per_second: one lock's"
				" flood delays every lock's events");
	}
	acl->id = identifier;
	acl->root = strdup(root);
	count = (int)strlen(relays) + 1; /* at most this many names */
	names = calloc((size_t)count, sizeof(*names));
	acl->relays = calloc((size_t)count, sizeof(*acl->relays));
	if(acl->root == NULL || names == NULL || acl->relays == NULL){
		free(names);
		acl_free(acl);
		return MOSQ_ERR_NOMEM;
	}
	count = split(relays, names, count);
	for(int i = 0; i < count; i++){
		acl->relays[i].name = names[i];
	}
	acl->relay_count = count < 0 ? 0 : count;
	free(names);
	if(count < 0){
		acl_free(acl);
		return MOSQ_ERR_NOMEM;
	}
	acl->relayed_count = split(relayed, acl->relayed, MAX_RELAYED);
	if(acl->relayed_count < 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "lockwise_acl: plugin_opt_relayed_topics: at most %d filters (or no"
				" memory)", MAX_RELAYED);
		acl->relayed_count = 0;
		acl_free(acl);
		return MOSQ_ERR_INVAL;
	}
	for(int i = 0; i < acl->relayed_count; i++){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: holding locks' events to %s until a relay subscribes",
				acl->relayed[i]);
	}
	if(acl->relayed_count == 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "lockwise_acl: no plugin_opt_relayed_topics: locks' events are taken"
				" while no relay subscribes (and lost)");
	}
	snprintf(acl->run, sizeof(acl->run), "%llu", next_run(run_file));
	*userdata = acl;
	if(mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, acl) != MOSQ_ERR_SUCCESS
			|| mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, acl)
				!= MOSQ_ERR_SUCCESS
			|| mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, acl) != MOSQ_ERR_SUCCESS
			|| mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, acl) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct lockwise_acl *acl = userdata;
	(void)options;
	(void)option_count;

	if(acl != NULL){
		mosquitto_callback_unregister(acl->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(acl->id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
		mosquitto_callback_unregister(acl->id, MOSQ_EVT_MESSAGE, on_message, NULL);
		mosquitto_callback_unregister(acl->id, MOSQ_EVT_TICK, on_tick, NULL);
		acl_free(acl);
	}
	return MOSQ_ERR_SUCCESS;
}
