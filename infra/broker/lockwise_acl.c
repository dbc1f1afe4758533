/*
 * LockWise's subscription check for Mosquitto 2.0 (plugin interface v5): a lock may subscribe to its own command
 * topic and nothing else.
 *
 * Mosquitto's acl_file never refuses a subscription (security_default.c: "FIXME - implement ACL subscription
 * strings") and checks read rights only as it delivers each message. Attack run 15: one paired lock subscribed
 * 200,000 shared-subscription groups to lockwise/+/state (granted, each delivering nothing) in a 7-day session;
 * the broker then checked and refused each group on every lock's report (85-135 ms of its one thread a message,
 * ~10 messages/s), every app command expired unsent, and the session outlived the lock's deletion.
 *
 * This plugin's ACL callback runs before acl_file's (plugins register first) and decides subscriptions only:
 *   - a relay identity (plugin_opt_relay_users, comma-separated): deferred to acl_file, which grants it;
 *   - any other client (a lock: its certificate's common name is its username): granted exactly
 *     <topic_root>/<username>/cmd, refused anything else (wildcards, $share groups, other locks' topics);
 *   - unsubscribing, reading and writing: deferred to acl_file (its per-lock patterns).
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -o lockwise_acl.so lockwise_acl.c (Debian: gcc, libc6-dev,
 * mosquitto-dev, libmosquitto-dev).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

struct lockwise_acl {
	mosquitto_plugin_id_t *id;
	char *root;   /* the topic root, "lockwise" */
	char *relays; /* ",lockwise-relay-1,lockwise-relay-2," */
};

static bool is_relay(const struct lockwise_acl *acl, const char *username)
{
	size_t len = strlen(username);
	const char *at = acl->relays;
	if(len == 0 || strchr(username, ',') != NULL){ /* a name spanning two of the list's is none of them */
		return false;
	}
	while((at = strstr(at, username)) != NULL){
		if(at > acl->relays && at[-1] == ',' && at[len] == ','){
			return true;
		}
		at++;
	}
	return false;
}

/* Whether topic is exactly <root>/<username>/cmd. A username with a wildcard or a separator in it owns nothing. */
static bool own_commands(const struct lockwise_acl *acl, const char *username, const char *topic)
{
	size_t root_len = strlen(acl->root), user_len = strlen(username);
	if(user_len == 0 || strpbrk(username, "+#/") != NULL){
		return false;
	}
	return strncmp(topic, acl->root, root_len) == 0
		&& topic[root_len] == '/'
		&& strncmp(topic + root_len + 1, username, user_len) == 0
		&& strcmp(topic + root_len + 1 + user_len, "/cmd") == 0;
}

/* One line a second at most, the topic cut short: a lock sending refused subscriptions without end would otherwise
 * write a line for each (up to 64 KiB of topic). */
static void refused_log(const char *username, const char *topic)
{
	static time_t last;
	static unsigned long more;
	time_t now = time(NULL);

	if(now == last){
		more++;
		return;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "lockwise_acl: refused %.64s's subscription to %.128s (and %lu more since)",
			username, topic, more);
	last = now;
	more = 0;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	const struct mosquitto_evt_acl_check *ed = event_data;
	const struct lockwise_acl *acl = userdata;
	const char *username;
	(void)event;

	if(ed->access != MOSQ_ACL_SUBSCRIBE){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	username = mosquitto_client_username(ed->client);
	if(username == NULL){
		return MOSQ_ERR_ACL_DENIED;
	}
	if(is_relay(acl, username)){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	if(own_commands(acl, username, ed->topic)){
		return MOSQ_ERR_SUCCESS;
	}
	refused_log(username, ed->topic);
	return MOSQ_ERR_ACL_DENIED;
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
	const char *root = "lockwise", *relays = "";
	size_t len;

	if(acl == NULL){
		return MOSQ_ERR_NOMEM;
	}
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "topic_root") == 0){
			root = options[i].value;
		}else if(strcmp(options[i].key, "relay_users") == 0){
			relays = options[i].value;
		}
	}
	acl->id = identifier;
	acl->root = strdup(root);
	len = strlen(relays) + 3;
	acl->relays = malloc(len);
	if(acl->root == NULL || acl->relays == NULL){
		free(acl->root);
		free(acl->relays);
		free(acl);
		return MOSQ_ERR_NOMEM;
	}
	strcpy(acl->relays, ",");
	strcat(acl->relays, relays);
	strcat(acl->relays, ",");
	*userdata = acl;
	return mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, acl);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct lockwise_acl *acl = userdata;
	(void)options;
	(void)option_count;

	if(acl != NULL){
		mosquitto_callback_unregister(acl->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		free(acl->root);
		free(acl->relays);
		free(acl);
	}
	return MOSQ_ERR_SUCCESS;
}
