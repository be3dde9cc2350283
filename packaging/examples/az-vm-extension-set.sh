#!/usr/bin/env bash
# Deploy the InfiniBandDriverLinux extension with the Azure CLI.
# Examples to copy from, not a script to run as is: set the variables first.
# Public settings are described in manifest/settings.schema.json and the README's settings table.
set -euo pipefail

rg=hpc-rg
vm=hpc-node-0
vmss=hpc-vmss

# 1. One VM, catalog defaults.
az vm extension set --resource-group "$rg" --vm-name "$vm" \
  --publisher OpenSource.HpcCompute --name InfiniBandDriverLinux --version 1.0 \
  --settings '{"stack":"auto","ipoib":"auto"}'

# 2. One VM, DOCA-OFED pinned to a catalog version, packages from a private mirror that copies the
#    vendor's directory layout.
az vm extension set --resource-group "$rg" --vm-name "$vm" \
  --publisher OpenSource.HpcCompute --name InfiniBandDriverLinux --version 1.0 \
  --settings '{"stack":"doca","version":"3.2.1","mirror":"https://hpcmirror.blob.core.windows.net/mellanox"}'

# 3. One VM (Ubuntu 22.04), a copy of doca-host_3.2.1-044000-25.10-ubuntu2204_amd64.deb kept in
#    your own storage account. The public settings carry only its SHA-256; the URL with its SAS
#    token is a protected setting, written to a private file from Key Vault and passed by path
#    (az accepts a JSON file path for --protected-settings).
protected=$(mktemp)
trap 'rm -f "$protected"' EXIT
chmod 600 "$protected"
az keyvault secret show --vault-name hpc-kv --name ibdriver-package-url --query value -o tsv \
  | python3 -c 'import json,sys; json.dump({"packageUrl": sys.stdin.read().strip()}, sys.stdout)' \
  > "$protected"
az vm extension set --resource-group "$rg" --vm-name "$vm" \
  --publisher OpenSource.HpcCompute --name InfiniBandDriverLinux --version 1.0 \
  --settings '{"package":{"sha256":"75b8d4258b7239ef5021abaa25e7eeb4fcbc0c8117cab89ce1a766d2d218c8a0"},"ipoib":"auto"}' \
  --protected-settings "$protected"

# 4. A scale set: set the extension in the model, then roll it out to the existing instances
#    (needed when the upgrade policy is Manual).
az vmss extension set --resource-group "$rg" --vmss-name "$vmss" \
  --publisher OpenSource.HpcCompute --name InfiniBandDriverLinux --version 1.0 \
  --settings '{"stack":"auto","ipoib":"auto","hcaNaming":"stable"}'
az vmss update-instances --resource-group "$rg" --name "$vmss" --instance-ids '*'
