#!/usr/bin/env bash
# slotkeeper broker bootstrap: makes an instance of the broker Auto Scaling group the
# Kafka broker of the slot the launch function gives it. It installs Java, Kafka and
# the CloudWatch agent; waits (IMDSv2) for the instance's slotkeeper tags, then until
# it may serve (target lifecycle state InService, the slot's lease bound to it, the
# group has it InService); finds the volume the lease records by id in
# /dev/disk/by-id, formats it only if slotkeeper made it blank for this very claim,
# mounts it; writes the
# KRaft configuration; starts the CloudWatch agent and Kafka (systemd). A refusal to
# use the volume stops it before Kafka starts, with the reason in the log and in the
# instance's slotkeeper:refused tag.
#
# The user data writes this file, /etc/slotkeeper/broker.env and
# /etc/slotkeeper/cloudwatch-agent.json and runs it once as root. Running it again is
# safe. Sourced, it only defines functions (deploy/bootstrap_test.go). Settings come
# from the environment, else from SLOTKEEPER_ENV_FILE (KEY=VALUE lines); see
# docs/deploy.md for the list.

set -euo pipefail

readonly BROKER_PORT=9092
readonly CONTROLLER_PORT=9093
readonly KAFKA_HOME=/opt/kafka KAFKA_UID=9092
readonly KAFKA_CONFIG=/etc/kafka/server.properties
readonly AGENT_CONFIG_SOURCE=/etc/slotkeeper/cloudwatch-agent.json
readonly AGENT_HOME=/opt/aws/amazon-cloudwatch-agent
# How long systemd lets Kafka shut down: below the terminate function's SSM wait
# (SLOTKEEPER_SSM_TIMEOUT, 2m; test/template_test.go checks it).
readonly STOP_TIMEOUT_SECONDS=110

# Identity of this instance, set by wait_for_slot; the slot's volume and the value of
# its slotkeeper:never-formatted mark ("" without one), set by wait_until_serving and
# slot_volume.
INSTANCE_ID="" REGION="" AZ="" SLOT="" NODE_ID="" LEASE=""
VOLUME_ID="" MARK=""
IMDS_TOKEN=""

log() { printf 'slotkeeper-bootstrap: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# refuse REASON: never start Kafka here. The reason goes to the log and to the
# instance's slotkeeper:refused tag, which slotctl status shows.
refuse() {
	local why
	why=$(printf '%s' "$*" | tr -c '[:alnum:] .:/=_@+-' ' ' | cut -c1-250)
	log "REFUSED: $*"
	aws ec2 create-tags --region "$REGION" --resources "$INSTANCE_ID" --tags "Key=slotkeeper:cluster,Value=$SLOTKEEPER_CLUSTER" \
		"Key=slotkeeper:refused,Value=$why" >/dev/null || log "could not tag $INSTANCE_ID with the refusal"
	exit 1
}

# load_settings FILE: export FILE's SLOTKEEPER_* lines the environment lacks, literally.
load_settings() {
	local file=$1 line key
	[[ -r $file ]] || return 0
	while IFS= read -r line || [[ -n $line ]]; do
		[[ $line =~ ^(SLOTKEEPER_[A-Z0-9_]+)=(.*)$ ]] || continue
		key=${BASH_REMATCH[1]}
		[[ -n ${!key+set} ]] || export "$key=${BASH_REMATCH[2]}"
	done <"$file"
}

# check_settings: fill the defaults; fail on a missing or malformed setting.
check_settings() {
	: "${SLOTKEEPER_NODE_ID_BASE:=0}" "${SLOTKEEPER_CONTROLLER_COUNT:=3}" "${SLOTKEEPER_DATA_MOUNT:=/var/lib/kafka}"
	local name
	for name in SLOTKEEPER_CLUSTER SLOTKEEPER_DNS_NAME SLOTKEEPER_SLOT_COUNT SLOTKEEPER_TABLE; do
		[[ -n ${!name:-} ]] || die "$name is not set"
	done
	for name in SLOTKEEPER_SLOT_COUNT SLOTKEEPER_NODE_ID_BASE SLOTKEEPER_CONTROLLER_COUNT; do
		[[ ${!name} =~ ^[0-9]+$ ]] || die "$name=${!name} is not a number"
	done
	((SLOTKEEPER_SLOT_COUNT >= 1)) || die "SLOTKEEPER_SLOT_COUNT must be at least 1"
	((SLOTKEEPER_CONTROLLER_COUNT >= 1)) || die "SLOTKEEPER_CONTROLLER_COUNT must be at least 1"
	[[ $SLOTKEEPER_DATA_MOUNT == /* ]] || die "SLOTKEEPER_DATA_MOUNT=$SLOTKEEPER_DATA_MOUNT is not an absolute path"
}

imds_endpoint() { printf '%s' "${SLOTKEEPER_IMDS_ENDPOINT:-http://169.254.169.254}"; }

# imds_login: get an IMDSv2 session token.
imds_login() {
	local attempt
	for attempt in 1 2 3 4 5; do
		if IMDS_TOKEN=$(curl -sf --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' \
			"$(imds_endpoint)/latest/api/token"); then
			return 0
		fi
		log "no IMDSv2 token yet (attempt $attempt)"
		sleep "${SLOTKEEPER_POLL_INTERVAL:-5}"
	done
	die "cannot get an IMDSv2 token from $(imds_endpoint)"
}

# imds PATH: print latest/meta-data/PATH; fail if it does not exist.
imds() {
	curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$(imds_endpoint)/latest/meta-data/$1"
}

# wait_for_slot: wait for the slot tags (launch writes them in one call once the ENI and
# volume are attached), then set INSTANCE_ID, REGION, AZ, SLOT and NODE_ID.
wait_for_slot() {
	local deadline=$((SECONDS + ${SLOTKEEPER_TAG_TIMEOUT:-1800})) cluster
	log "waiting for the slotkeeper:node-id tag (instance metadata tags)"
	until NODE_ID=$(imds tags/instance/slotkeeper:node-id); do
		((SECONDS < deadline)) || die "no slotkeeper:node-id tag: launch gave this instance no slot (see its log)"
		sleep "${SLOTKEEPER_POLL_INTERVAL:-5}"
	done
	SLOT=$(imds tags/instance/slotkeeper:slot) || die "no slotkeeper:slot tag"
	LEASE=$(imds tags/instance/slotkeeper:lease) || die "no slotkeeper:lease tag"
	cluster=$(imds tags/instance/slotkeeper:cluster) || die "no slotkeeper:cluster tag"
	INSTANCE_ID=$(imds instance-id) || die "no instance-id"
	REGION=$(imds placement/region) || die "no placement/region"
	AZ=$(imds placement/availability-zone) || die "no placement/availability-zone"

	[[ $cluster == "$SLOTKEEPER_CLUSTER" ]] || die "the instance belongs to cluster $cluster, this script to $SLOTKEEPER_CLUSTER"
	[[ $SLOT =~ ^[0-9]+$ && $NODE_ID =~ ^[0-9]+$ ]] || die "malformed slot tags: slot $SLOT, node id $NODE_ID"
	((SLOT < SLOTKEEPER_SLOT_COUNT)) || die "slot $SLOT is not below the slot count $SLOTKEEPER_SLOT_COUNT"
	((NODE_ID == SLOTKEEPER_NODE_ID_BASE + SLOT)) || die "node id $NODE_ID is not $SLOTKEEPER_NODE_ID_BASE + slot $SLOT"
	log "instance $INSTANCE_ID in $AZ is slot $SLOT, node $NODE_ID"
}

# read_lease: print the slot's lease (consistent read): state, holder, version, volume.
read_lease() {
	aws dynamodb get-item --region "$REGION" --table-name "$SLOTKEEPER_TABLE" --consistent-read \
		--key "{\"cluster\":{\"S\":\"$SLOTKEEPER_CLUSTER\"},\"slot\":{\"N\":\"$SLOT\"}}" --output text \
		--query '[Item.state.S,Item.holder.S,Item.version.N,Item.volume_id.S]'
}

# wait_until_serving: wait until this instance may serve as node NODE_ID, and set
# VOLUME_ID to the volume the slot's lease records. It may once all three hold:
#   - IMDS autoscaling/target-lifecycle-state is InService (not Terminated: an
#     abandoned instance never serves; this already reads InService in Pending:Wait);
#   - the lease is bound, held by this instance at its slotkeeper:lease version;
#   - the group has it InService: launch completed the lifecycle action with CONTINUE.
wait_until_serving() {
	local deadline=$((SECONDS + ${SLOTKEEPER_SERVE_TIMEOUT:-1800})) target why said="" state holder version volume group
	while :; do
		target=$(imds autoscaling/target-lifecycle-state) || target=unknown
		case $target in
		InService)
			read -r state holder version volume < <(read_lease) || state=unreadable
			why="slot $SLOT's lease is $state by ${holder:-nobody} at version ${version:-0}, not bound by this instance at version $LEASE"
			if [[ $state == bound && $holder == "$INSTANCE_ID" && $version == "$LEASE" ]]; then
				group=$(aws autoscaling describe-auto-scaling-instances --region "$REGION" --instance-ids "$INSTANCE_ID" \
					--output text --query 'AutoScalingInstances[0].LifecycleState') || group=unknown
				why="the group has this instance $group, not InService"
				if [[ $group == InService ]]; then
					VOLUME_ID=$volume
					log "serving as node $NODE_ID: target InService, lease bound at version $LEASE, group InService"
					return 0
				fi
			fi
			;;
		Terminated | Detached | Standby) die "target lifecycle state $target: this instance never serves as node $NODE_ID" ;;
		Warmed:*) die "target lifecycle state $target: warm pools are not supported (a warm instance gets no slot; this runs once): remove the warm pool" ;;
		*) why="target lifecycle state $target, not InService" ;;
		esac
		[[ $why == "$said" ]] || log "waiting: $why"
		said=$why
		((SECONDS < deadline)) || die "not serving after ${SLOTKEEPER_SERVE_TIMEOUT:-1800}s: $why"
		sleep "${SLOTKEEPER_POLL_INTERVAL:-5}"
	done
}

# slot_volume: check the recorded volume is attached here and tagged for the slot; set
# MARK to the value of its slotkeeper:never-formatted mark ("" without one).
slot_volume() {
	local out attached slot mark
	[[ $VOLUME_ID == vol-* ]] || refuse "slot $SLOT's lease records no volume"
	out=$(aws ec2 describe-volumes --region "$REGION" --volume-ids "$VOLUME_ID" --output text --query \
		"Volumes[0].[Attachments[0].InstanceId,Tags[?Key=='slotkeeper:slot']|[0].Value,Tags[?Key=='slotkeeper:never-formatted']|[0].Value]") ||
		die "describing volume $VOLUME_ID failed"
	read -r attached slot mark <<<"$out"
	[[ $attached == "$INSTANCE_ID" ]] || refuse "volume $VOLUME_ID, which the lease records, is attached to $attached, not here"
	[[ $slot == "$SLOT" ]] || refuse "volume $VOLUME_ID is tagged slotkeeper:slot=$slot, not $SLOT"
	if [[ $mark == None ]]; then MARK=""; else MARK=$mark; fi
	log "slot $SLOT's volume is $VOLUME_ID (never-formatted mark: ${MARK:-none})"
}

# volume_device VOLUME_ID: print the volume's device: on Nitro, an NVMe device udev
# links as /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<id without hyphen>.
volume_device() {
	local volume=$1 link deadline=$((SECONDS + ${SLOTKEEPER_DEVICE_TIMEOUT:-120}))
	link="${SLOTKEEPER_DEVICE_DIR:-/dev/disk/by-id}/nvme-Amazon_Elastic_Block_Store_${volume//-/}"
	until [[ -e $link ]]; do
		((SECONDS < deadline)) || die "no device for volume $volume: $link does not exist"
		sleep "${SLOTKEEPER_POLL_INTERVAL:-5}"
	done
	readlink -f "$link"
}

# ensure_filesystem DEVICE: format DEVICE (xfs) only if it has no signature and its
# volume's slotkeeper:never-formatted mark is this instance's claim (LEASE): launch
# created the volume blank for this claim, or re-stamped the mark because the slot was
# never bound since the volume was recorded, so no broker can have used it. A mark of
# another claim may have outlived a use of the volume (an older bootstrap never
# cleared it): a device without a signature is then refused, never formatted, as it is
# without a mark (perhaps a damaged superblock). xfs or ext4 is kept; anything else
# (partition table, unknown signature, probe error) is refused. Once the filesystem
# exists, any mark is cleared; failing that is a refusal too.
ensure_filesystem() {
	local device=$1 fstype rc=0
	fstype=$(blkid -p -o value -s TYPE "$device") || rc=$?
	case $rc in
	0)
		case $fstype in
		xfs | ext4) log "$device already holds $fstype: keeping it" ;;
		*) refuse "$device (volume $VOLUME_ID) holds ${fstype:-a partition table or unknown signature}: refusing to touch it" ;;
		esac
		;;
	2)
		[[ -n $MARK ]] ||
			refuse "$device (volume $VOLUME_ID) has no filesystem signature and is not marked slotkeeper:never-formatted: perhaps a damaged filesystem; never formatting it"
		[[ $MARK == "$LEASE" ]] ||
			refuse "$device (volume $VOLUME_ID) has no filesystem signature and is marked never formatted for claim $MARK, not $LEASE: it may have been used since; never formatting it"
		log "$device is blank and volume $VOLUME_ID was made blank for claim $LEASE: formatting it (xfs)"
		mkfs.xfs -q -L kafka-data "$device"
		;;
	*) refuse "cannot probe $device (blkid exit $rc): refusing to format it" ;;
	esac
	if [[ -n $MARK ]]; then
		aws ec2 delete-tags --region "$REGION" --resources "$VOLUME_ID" --tags Key=slotkeeper:never-formatted >/dev/null ||
			refuse "could not clear the slotkeeper:never-formatted mark of $VOLUME_ID"
		MARK=""
		log "volume $VOLUME_ID has a filesystem: cleared its slotkeeper:never-formatted mark"
	fi
}

# set_fstab [LINE]: rewrite fstab without the data mount's line, plus LINE if given.
set_fstab() {
	local fstab=${SLOTKEEPER_FSTAB:-/etc/fstab} tmp
	tmp=$(mktemp "$fstab.XXXXXX")
	awk -v m="$SLOTKEEPER_DATA_MOUNT" '$2 != m' "$fstab" >"$tmp"
	[[ -z ${1:-} ]] || printf '%s\n' "$1" >>"$tmp"
	chmod 0644 "$tmp"
	mv -f "$tmp" "$fstab"
}

# mount_data DEVICE: mount DEVICE at the data mount, now and at every boot.
mount_data() {
	local device=$1 mount=$SLOTKEEPER_DATA_MOUNT uuid fstype
	uuid=$(blkid -o value -s UUID "$device") || die "no filesystem UUID on $device"
	fstype=$(blkid -o value -s TYPE "$device") || die "no filesystem type on $device"
	mkdir -p "$mount"
	set_fstab "UUID=$uuid $mount $fstype defaults,noatime,nofail 0 2"
	mountpoint -q "$mount" || mount --fstab "${SLOTKEEPER_FSTAB:-/etc/fstab}" "$mount"
	log "$device ($fstype, UUID $uuid) is mounted at $mount"
}

# cluster_id: SLOTKEEPER_KAFKA_CLUSTER_ID, or the first 16 bytes of
# SHA-256("slotkeeper:<cluster>") in base64url (the form of kafka-storage random-uuid).
cluster_id() {
	if [[ -n ${SLOTKEEPER_KAFKA_CLUSTER_ID:-} ]]; then
		printf '%s\n' "$SLOTKEEPER_KAFKA_CLUSTER_ID"
		return
	fi
	local hex bytes="" i
	hex=$(printf 'slotkeeper:%s' "$SLOTKEEPER_CLUSTER" | sha256sum | cut -c1-32)
	for ((i = 0; i < 32; i += 2)); do
		bytes+="\\x${hex:i:2}"
	done
	printf '%b' "$bytes" | basenc --base64url | tr -d '=\n'
	printf '\n'
}

# replication_factor: 3, or the slot count when smaller.
replication_factor() { printf '%d\n' $((SLOTKEEPER_SLOT_COUNT < 3 ? SLOTKEEPER_SLOT_COUNT : 3)); }

# kafka_properties: print this slot's server.properties (KRaft). Slots below the
# controller count are also controllers. Every address is a slot's DNS name.
kafka_properties() {
	local dns=$SLOTKEEPER_DNS_NAME base=$SLOTKEEPER_NODE_ID_BASE i voters="" roles listeners rf min_isr
	local controllers=$((SLOTKEEPER_CONTROLLER_COUNT < SLOTKEEPER_SLOT_COUNT ? SLOTKEEPER_CONTROLLER_COUNT : SLOTKEEPER_SLOT_COUNT))
	for ((i = 0; i < controllers; i++)); do
		voters+="${voters:+,}$((base + i))@broker-$i.$dns:$CONTROLLER_PORT"
	done
	if ((SLOT < controllers)); then
		roles=broker,controller
		listeners="PLAINTEXT://:$BROKER_PORT,CONTROLLER://:$CONTROLLER_PORT"
	else
		roles=broker
		listeners="PLAINTEXT://:$BROKER_PORT"
	fi
	rf=$(replication_factor)
	min_isr=$((rf > 1 ? rf - 1 : 1))
	cat <<EOF
# Written by slotkeeper-broker-bootstrap (cluster $SLOTKEEPER_CLUSTER, slot $SLOT).
process.roles=$roles
node.id=$NODE_ID
broker.rack=$AZ
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=PLAINTEXT://broker-$SLOT.$dns:$BROKER_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$SLOTKEEPER_DATA_MOUNT/data
controlled.shutdown.enable=true
unclean.leader.election.enable=false
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
EOF
	# New topics get their replication factor from the controllers: Kafka 4.x warns
	# about it on a broker-only node (5.0 ignores it there).
	((SLOT >= controllers)) || printf 'default.replication.factor=%d\n' "$rf"
}

# unexpected_entry: print the first entry of the data mount that a filesystem no
# broker has used cannot hold ("" if none): such a filesystem holds at most an empty
# lost+found (mkfs.ext4 makes one) and a data/ directory (an earlier run made it)
# holding at most bootstrap.checkpoint (kafka-storage format writes it before
# meta.properties: an earlier run stopped between the two).
unexpected_entry() {
	local m=$SLOTKEEPER_DATA_MOUNT
	find "$m" -xdev -mindepth 1 ! -path "$m/lost+found" ! -path "$m/data" \
		! -path "$m/data/bootstrap.checkpoint" ! -path "$m/data/bootstrap.checkpoint.tmp" -print -quit
}

# check_volume_identity: accept the mounted volume only if its data/meta.properties
# names this node and cluster, or it holds no log at all (unexpected_entry); refuse a
# log of another node or cluster, and files without data/meta.properties: perhaps a
# broker's log kept elsewhere on the volume (log.dirs was its root, or another
# directory), which a storage format in data/ would replace with an empty log.
check_volume_identity() {
	local mount=$SLOTKEEPER_DATA_MOUNT meta=$SLOTKEEPER_DATA_MOUNT/data/meta.properties id cid entry why=
	if [[ -f $meta ]]; then
		id=$(sed -n 's/^node\.id=//p' "$meta")
		cid=$(sed -n 's/^cluster\.id=//p' "$meta")
		[[ -z $id || $id == "$NODE_ID" ]] || why="$meta: node.id=$id, but slot $SLOT is node $NODE_ID"
		[[ -n $why || -z $cid || $cid == "$(cluster_id)" ]] || why="$meta: cluster.id=$cid, not $(cluster_id)"
	else
		entry=$(unexpected_entry) || entry="$mount (unreadable)"
		[[ -z $entry ]] || why="volume $VOLUME_ID holds $entry but no data/meta.properties: not blank, and no log of node $NODE_ID where slotkeeper runs it (log.dirs=$mount/data); a broker's log must be in data/ at the volume's root, meta.properties included (docs/deploy.md, adoption)"
	fi
	if [[ $why ]]; then
		# Not a log to resume: unmounted (unless in use), and out of fstab for the next boot.
		mountpoint -q "$mount" && umount "$mount" && set_fstab
		refuse "$why"
	fi
	if [[ -f $meta ]]; then
		log "the volume is node $NODE_ID's: resuming its log"
	else
		log "the volume holds no log: node $NODE_ID starts a new one in $mount/data"
	fi
}

# prepare_volume DEVICE: make DEVICE the data mount, checked to be this node's: its
# filesystem (ensure_filesystem), mounted (mount_data), its meta.properties or no log
# at all (check_volume_identity); only then is anything written to it (the log
# directory, its owner: kafka's fixed uid). A refused volume is unmounted again.
prepare_volume() {
	local device=$1 data=$SLOTKEEPER_DATA_MOUNT/data
	ensure_filesystem "$device"
	mount_data "$device"
	check_volume_identity
	mkdir -p "$data"
	[[ $(stat -c %u "$data") == "$KAFKA_UID" ]] || chown -R "$KAFKA_UID:$KAFKA_UID" "$data"
}

# heap_opts: a quarter of the memory, 512 MiB to 6 GiB (the page cache gets the rest).
heap_opts() {
	local mem_kib mib
	mem_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
	mib=$((mem_kib / 4096))
	mib=$((mib < 512 ? 512 : mib > 6144 ? 6144 : mib))
	printf -- '-Xms%dm -Xmx%dm\n' "$mib" "$mib"
}

# kafka_unit: print the systemd unit. Stopping it sends SIGTERM: Kafka then shuts down
# in a controlled way (hands its leaderships over) and exits 143. The terminate
# function's stop command (systemctl stop kafka) relies on this. Once Kafka has
# exited, the unit also syncs and unmounts the data volume (ExecStopPost, as root:
# +), so that a stop leaves the volume ready to be detached; an unmount that fails
# (something else uses the filesystem) is ignored here (-) and caught by the
# terminate function's own check. Starting the unit mounts the volume again
# (RequiresMountsFor).
kafka_unit() {
	cat <<EOF
[Unit]
Description=Apache Kafka broker (slotkeeper $SLOTKEEPER_CLUSTER slot $SLOT, node $NODE_ID)
Wants=network-online.target
After=network-online.target
RequiresMountsFor=$SLOTKEEPER_DATA_MOUNT

[Service]
Type=simple
User=kafka
Group=kafka
Environment="KAFKA_HEAP_OPTS=$(heap_opts)"
Environment=LOG_DIR=/var/log/kafka
ExecStart=$KAFKA_HOME/bin/kafka-server-start.sh $KAFKA_CONFIG
KillSignal=SIGTERM
SuccessExitStatus=143
TimeoutStopSec=$STOP_TIMEOUT_SECONDS
ExecStopPost=-+/bin/sh -c 'sync -f $SLOTKEEPER_DATA_MOUNT; ! mountpoint -q $SLOTKEEPER_DATA_MOUNT || umount $SLOTKEEPER_DATA_MOUNT'
Restart=on-failure
RestartSec=10
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
EOF
}

# write_file PATH MODE: replace PATH with standard input, atomically.
write_file() {
	local tmp
	mkdir -p "$(dirname "$1")"
	tmp=$(mktemp "$1.XXXXXX")
	cat >"$tmp"
	chmod "$2" "$tmp"
	mv -f "$tmp" "$1"
}

# install_software: Java, the CloudWatch agent, Kafka and its user, unless present.
install_software() {
	local dir=/opt/kafka_2.13-${SLOTKEEPER_KAFKA_VERSION:?} tmp
	: "${SLOTKEEPER_KAFKA_URL:?}"
	command -v java >/dev/null || dnf install -y -q java-21-amazon-corretto-headless
	[[ -x $AGENT_HOME/bin/amazon-cloudwatch-agent-ctl ]] || dnf install -y -q amazon-cloudwatch-agent
	if [[ ! -x $dir/bin/kafka-server-start.sh ]]; then
		log "downloading Kafka $SLOTKEEPER_KAFKA_VERSION from $SLOTKEEPER_KAFKA_URL"
		tmp=$(mktemp -d)
		curl -fsSL --retry 5 -o "$tmp/kafka.tgz" "$SLOTKEEPER_KAFKA_URL"
		mkdir -p "$dir"
		tar -xzf "$tmp/kafka.tgz" -C "$dir" --strip-components=1
		rm -rf "$tmp"
	fi
	ln -sfn "$dir" "$KAFKA_HOME"
	# A fixed uid: the slot's volume moves between instances with its files.
	getent group kafka >/dev/null || groupadd --gid "$KAFKA_UID" kafka
	id -u kafka >/dev/null 2>&1 || useradd --system --uid "$KAFKA_UID" --gid kafka --home-dir "$KAFKA_HOME" --shell /sbin/nologin kafka
}

# install_agent_config: run the CloudWatch agent with slotkeeper's configuration, which
# must report the data mount (the slot's disk alarm watches it).
install_agent_config() {
	local config=$AGENT_HOME/etc/slotkeeper-disk.json
	grep -qF "\"$SLOTKEEPER_DATA_MOUNT\"" "$AGENT_CONFIG_SOURCE" ||
		die "$AGENT_CONFIG_SOURCE does not report on $SLOTKEEPER_DATA_MOUNT"
	install -D -m 0644 "$AGENT_CONFIG_SOURCE" "$config"
	"$AGENT_HOME/bin/amazon-cloudwatch-agent-ctl" -a fetch-config -m ec2 -s -c "file:$config"
}

# start_kafka: write Kafka's configuration, format its KRaft storage unless it is,
# start the CloudWatch agent and Kafka, and clear an earlier refusal tag. main runs it
# only on a volume prepare_volume accepted.
start_kafka() {
	mkdir -p /var/log/kafka
	chown kafka:kafka /var/log/kafka
	kafka_properties | write_file "$KAFKA_CONFIG" 0644
	runuser -u kafka -- "$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted \
		--cluster-id "$(cluster_id)" --config "$KAFKA_CONFIG"
	install_agent_config
	kafka_unit | write_file /etc/systemd/system/kafka.service 0644
	systemctl daemon-reload
	systemctl enable --now kafka
	if imds tags/instance/slotkeeper:refused >/dev/null; then
		aws ec2 delete-tags --region "$REGION" --resources "$INSTANCE_ID" --tags Key=slotkeeper:refused >/dev/null || true
	fi
	log "Kafka runs as node $NODE_ID (slot $SLOT, broker-$SLOT.$SLOTKEEPER_DNS_NAME)"
}

# main: everything, in order. deploy/disk_test.go runs it on real block devices with
# install_software and start_kafka replaced, so every disk step here is tested as run.
main() {
	((EUID == 0)) || die "run as root"
	load_settings "${SLOTKEEPER_ENV_FILE:-/etc/slotkeeper/broker.env}"
	check_settings
	install_software
	imds_login
	wait_for_slot
	wait_until_serving
	slot_volume

	local device
	device=$(volume_device "$VOLUME_ID")
	prepare_volume "$device"
	start_kafka
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
